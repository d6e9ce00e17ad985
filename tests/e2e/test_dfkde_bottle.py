"""DFKDE on the real MVTec bottle data through the command line, at its defaults.

Target from the issue: image AUROC >= 0.98 (256 px, tf_efficientnet_lite0 layer 4).
DFKDE does not localise (its map is the image score everywhere), so there is no pixel target.
"""

import json

import pytest
from adcore.cli import main

pytestmark = pytest.mark.e2e


def test_dfkde_reaches_image_target_and_checkpoint_reproduces_it(bottle_dir, tmp_path):
    output = tmp_path / "dfkde"
    fit = ["fit", "--model", "dfkde", "--data", f"mvtec:{bottle_dir}", "--output", str(output), "--no-progress"]
    assert main(fit) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["image_auroc"] >= 0.98

    checkpoint = str(output / "model.safetensors")
    assert main(["test", "--checkpoint", checkpoint, "--output", str(tmp_path / "retest"), "--no-progress"]) == 0
    retest = json.loads((tmp_path / "retest" / "metrics.json").read_text())
    assert retest["image_auroc"] == metrics["image_auroc"]
