"""FastFlow on the real MVTec bottle data through the command line, at the plugin's defaults.

The issue's targets (256 px, tf_efficientnet_lite0, 2 cores): trains within 10 minutes,
image AUROC >= 0.99, pixel AUROC >= 0.96. Measured at the defaults (data-initialised
LayerNorms, 6 epochs at lr 2e-4): 1.000 / 0.978 in about 26 s of training.
"""

import json

import pytest
from adcore.cli import main

pytestmark = pytest.mark.e2e


def test_fastflow_reaches_the_issue_targets_with_default_budget(bottle_dir, tmp_path):
    output = tmp_path / "fastflow"
    code = main(
        ["fit", "--model", "fastflow", "--data", f"mvtec:{bottle_dir}", "--output", str(output), "--no-progress"]
    )
    assert code == 0
    metrics = json.loads((output / "metrics.json").read_text())
    report = json.loads((output / "report.json").read_text())
    losses = [epoch["loss"] for epoch in report["history"]]
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 0.1  # the flows really learned the normal features' density
    assert (output / "loss_curve.png").stat().st_size > 0
    assert metrics["image_auroc"] >= 0.99
    assert metrics["pixel_auroc"] >= 0.96
