"""CFlow on the real MVTec bottle data through the command line, at the plugin's defaults.

Defaults: 256 px, tf_efficientnet_lite0 (packaged ImageNet weights), layers (2, 3, 4),
8 coupling blocks per decoder, fiber batches of 4096 positions at the finest scale,
2 epochs. The checkpoint round trip is unit-tested (it would add a third pass over the
test images to a test that must stay within its time budget).
"""

import json

import pytest
from adcore.cli import main

pytestmark = pytest.mark.e2e


def test_cflow_reaches_the_issue_targets_at_its_defaults(bottle_dir, tmp_path):
    output = tmp_path / "cflow"
    command = ["fit", "--model", "cflow", "--data", f"mvtec:{bottle_dir}", "--output", str(output), "--no-progress"]
    assert main(command) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    report = json.loads((output / "report.json").read_text())
    losses = [epoch["loss"] for epoch in report["history"]]
    assert len(losses) == 2 and losses[-1] < losses[0]  # the decoders really learned
    # The issue's targets (the peer, anomalib 2.7.0: image 1.000 / pixel 0.975 in 345 s).
    assert metrics["image_auroc"] >= 0.99
    assert metrics["pixel_auroc"] >= 0.97
