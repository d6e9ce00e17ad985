"""Reverse Distillation on the real MVTec bottle data through the command line, on a tiny budget.

Two epochs at 256 px (tf_efficientnet_lite0, packaged ImageNet weights) instead of the default
budget, to stay near a minute on an idle 2-core machine. Measured on cached features with the
same optimizer: after 2 epochs image AUROC 0.92 and pixel AUROC 0.96 (the defaults reach the
targets, see the plugin's README). An untrained or broken student (a decoder that does not
reconstruct the teacher, a map from the wrong levels) stays far below these floors.
"""

import json

import pytest
from adcore.cli import main

pytestmark = pytest.mark.e2e


def test_reverse_distillation_learns_bottle_in_two_epochs(bottle_dir, tmp_path):
    output = tmp_path / "reverse_distillation"
    code = main(
        [
            "fit",
            "--model",
            "reverse_distillation",
            "--data",
            f"mvtec:{bottle_dir}",
            "--epochs",
            "2",
            "--output",
            str(output),
            "--no-progress",
        ]
    )
    assert code == 0
    metrics = json.loads((output / "metrics.json").read_text())
    report = json.loads((output / "report.json").read_text())
    losses = [epoch["loss"] for epoch in report["history"]]
    assert len(losses) == 2
    assert losses[-1] < 0.6 * losses[0]  # the student really learned to reverse the teacher
    assert metrics["image_auroc"] >= 0.85
    assert metrics["pixel_auroc"] >= 0.93
