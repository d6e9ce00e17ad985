"""CS-Flow on the real MVTec bottle data through the command line.

The issue's targets (image AUROC >= 0.99, pixel AUROC >= 0.96) are for the default budget
(8 epochs), which takes longer than this suite's per-plugin budget (~150 s). This test
trains 2 epochs instead and asserts honest, lower targets for that budget (measured on
bottle through this CLI path after 2 epochs: image AUROC 0.992, pixel AUROC 0.880); the
full-budget numbers belong in plugins/csflow/README.md and the benchmark (`csflow` run).
"""

import json

import pytest
from adcore.cli import main

pytestmark = pytest.mark.e2e


def test_csflow_learns_bottle_in_a_reduced_budget(bottle_dir, tmp_path):
    output = tmp_path / "csflow"
    code = main(
        [
            "fit",
            "--model",
            "csflow",
            "--data",
            f"mvtec:{bottle_dir}",
            "--output",
            str(output),
            "--epochs",
            "2",
            "--heatmaps",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0
    metrics = json.loads((output / "metrics.json").read_text())
    report = json.loads((output / "report.json").read_text())
    losses = [epoch["loss"] for epoch in report["history"]]
    assert len(losses) == 2 and losses[1] < losses[0]  # the flow is still learning fast
    assert metrics["image_auroc"] >= 0.98
    assert metrics["pixel_auroc"] >= 0.85
