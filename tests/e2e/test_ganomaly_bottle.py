"""GANomaly on the real MVTec bottle data through the command line, with a tiny budget.

32 px (the default), 5 epochs instead of the default 15. The generator must have learned to
reconstruct bottles (its contextual L1 loss falls) and the latent distance must rank the
defective bottles above the good ones clearly better than chance. A network that learned
nothing, a score of the wrong sign or a broken loss lands near or below 0.5. Measured at this
setting (benchmarks/bench_ganomaly_peer.py, 1 thread): 0.852 with seed 0 (the CLI's), 0.796 with
seed 1; the floor is 0.7.
"""

import json

import pytest
from adcore.cli import main

pytestmark = pytest.mark.e2e


def test_ganomaly_learns_bottles_with_a_tiny_budget(bottle_dir, tmp_path):
    output = tmp_path / "ganomaly"
    code = main(
        [
            "fit", "--model", "ganomaly", "--data", f"mvtec:{bottle_dir}", "--output", str(output),
            "--epochs", "5", "--no-progress", "--heatmaps", "0",
        ]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((output / "metrics.json").read_text())
    report = json.loads((output / "report.json").read_text())
    history = report["history"]
    assert len(history) == 5
    assert {"loss", "discriminator", "adversarial", "contextual", "encoder"} <= set(history[0])
    assert history[-1]["contextual"] < 0.8 * history[0]["contextual"]  # it learned to reconstruct
    assert "pixel_auroc" not in metrics  # GANomaly scores images only
    assert metrics["image_auroc"] >= 0.7
