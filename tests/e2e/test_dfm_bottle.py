"""DFM on the real MVTec bottle data through the command line.

Targets from the issue at the defaults (256 px, tf_efficientnet_lite0 layer 3, feature
reconstruction error): image AUROC >= 0.99, pixel AUROC >= 0.93. The negative
log-likelihood score is checked on the same data with a lower image target (0.96 measured
0.985 at the defaults; it has no target in the issue).
"""

import json

import pytest
from adcore.cli import main

pytestmark = pytest.mark.e2e


def _fit(bottle_dir, output, *extra: str) -> dict:
    command = ["fit", "--model", "dfm", "--data", f"mvtec:{bottle_dir}", "--output", str(output), "--no-progress"]
    assert main([*command, *extra]) == 0
    return json.loads((output / "metrics.json").read_text())


def test_dfm_fre_reaches_targets_and_checkpoint_reproduces_them(bottle_dir, tmp_path):
    metrics = _fit(bottle_dir, tmp_path / "dfm")
    assert metrics["image_auroc"] >= 0.99
    assert metrics["pixel_auroc"] >= 0.93

    checkpoint = str(tmp_path / "dfm" / "model.safetensors")
    assert main(["test", "--checkpoint", checkpoint, "--output", str(tmp_path / "retest"), "--no-progress"]) == 0
    retest = json.loads((tmp_path / "retest" / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro"):
        assert retest[key] == metrics[key]


def test_dfm_nll_score_separates_the_images(bottle_dir, tmp_path):
    metrics = _fit(bottle_dir, tmp_path / "dfm-nll", "--param", "score_type=nll")
    assert metrics["image_auroc"] >= 0.96
    assert metrics["pixel_auroc"] >= 0.93  # the map is the reconstruction error either way
