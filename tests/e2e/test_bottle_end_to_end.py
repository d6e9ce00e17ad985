"""Fit, test and predict on the real MVTec bottle data through the command line.

The accuracy thresholds are the targets of the foundation issue, at the plugins' default
settings (256 px, tf_efficientnet_lite0 with the packaged ImageNet weights).
"""

import csv
import json

import pytest
from adcore.cli import main

pytestmark = pytest.mark.e2e


def _fit(model: str, bottle_dir, output, *extra: str) -> dict:
    code = main(
        [
            "fit",
            "--model",
            model,
            "--data",
            f"mvtec:{bottle_dir}",
            "--output",
            str(output),
            "--heatmaps",
            "6",
            "--no-progress",
            *extra,
        ]
    )
    assert code == 0
    return json.loads((output / "metrics.json").read_text())


def test_padim_reaches_target_and_checkpoint_reproduces_it(bottle_dir, tmp_path, capsys):
    metrics = _fit("padim", bottle_dir, tmp_path / "padim")
    assert metrics["image_auroc"] >= 0.99
    assert metrics["pixel_auroc"] >= 0.975
    assert len(list((tmp_path / "padim" / "heatmaps").glob("*.png"))) == 6

    assert (
        main(
            [
                "test",
                "--checkpoint",
                str(tmp_path / "padim" / "model.safetensors"),
                "--output",
                str(tmp_path / "retest"),
                "--no-progress",
            ]
        )
        == 0
    )
    retest = json.loads((tmp_path / "retest" / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro"):
        assert retest[key] == metrics[key]

    defect_dir = bottle_dir / "test" / "broken_large"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(tmp_path / "padim" / "model.safetensors"),
                str(defect_dir),
                "--output",
                str(tmp_path / "pred"),
                "--heatmaps",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader((tmp_path / "pred" / "predictions.csv").open()))
    assert len(rows) == len(list(defect_dir.glob("*.png")))
    assert sum(row["is_anomalous"] == "True" for row in rows) >= 0.9 * len(rows)


def test_stfpm_reaches_target_with_default_budget(bottle_dir, tmp_path):
    metrics = _fit("stfpm", bottle_dir, tmp_path / "stfpm")
    report = json.loads((tmp_path / "stfpm" / "report.json").read_text())
    losses = [epoch["loss"] for epoch in report["history"]]
    assert losses[-1] < losses[0] / 3  # the student really learned
    assert metrics["image_auroc"] >= 0.98
    assert metrics["pixel_auroc"] >= 0.95
