"""CFA on the real MVTec bottle data through the command line, at the plugin's defaults.

Targets of the issue: image AUROC >= 0.97, pixel AUROC >= 0.96 (256 px,
tf_efficientnet_lite0 with the packaged ImageNet weights).
"""

import json

import pytest
from adcore.cli import main

pytestmark = pytest.mark.e2e


def test_cfa_reaches_target_with_default_budget(bottle_dir, tmp_path):
    output = tmp_path / "cfa"
    assert (
        main(["fit", "--model", "cfa", "--data", f"mvtec:{bottle_dir}", "--output", str(output), "--no-progress"]) == 0
    )
    metrics = json.loads((output / "metrics.json").read_text())
    report = json.loads((output / "report.json").read_text())
    losses = [epoch["loss"] for epoch in report["history"]]
    assert losses[-1] < 0.9 * losses[0]  # the descriptor really adapted towards the centroids
    assert metrics["image_auroc"] >= 0.97
    assert metrics["pixel_auroc"] >= 0.96
