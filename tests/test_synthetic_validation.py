"""--val-split synthetic:F: held-out normal images, half made anomalous, F1-calibrated thresholds."""

from __future__ import annotations

import json

import torch
from adcore.cli import main
from adcore.data import AnomalyDataset, load_data
from adcore.data.synthetic_validation import SyntheticValidationSet
from adcore.protocols import InputSpec
from helpers import make_mvtec, single_thread


def test_the_split_holds_out_normal_training_images(mvtec_root):
    splits = load_data(f"mvtec:{mvtec_root}", val_split="synthetic:0.5")
    plain = load_data(f"mvtec:{mvtec_root}")
    assert splits.synthetic_val and not plain.synthetic_val
    assert len(splits.val) + len(splits.train) == len(plain.train)
    assert not {r.path for r in splits.val} & {r.path for r in splits.train}
    assert all(r.label == 0 for r in splits.val)


def test_half_the_held_out_images_get_an_exact_mask_and_the_rest_stay_as_they_were(mvtec_root):
    splits = load_data(f"mvtec:{mvtec_root}", val_split="synthetic:0.5")
    spec = InputSpec((32, 32))
    synthetic = SyntheticValidationSet(splits.val, spec, seed=0)
    plain = AnomalyDataset(sorted(splits.val, key=lambda r: str(r.path)), spec)
    labels = [synthetic.records[i].label for i in range(len(synthetic))]
    assert labels == [i % 2 for i in range(len(synthetic))]
    for i in range(len(synthetic)):
        pixels, mask = synthetic.raw(i)
        original, _ = plain.raw(i)
        if labels[i]:
            assert mask.any() and not torch.equal(pixels, original)
            assert torch.equal(pixels[:, ~mask[0]], original[:, ~mask[0]])  # only inside the mask
        else:
            assert not mask.any() and torch.equal(pixels, original)
    again = SyntheticValidationSet(list(reversed(splits.val)), spec, seed=0)
    other = SyntheticValidationSet(splits.val, spec, seed=1)
    assert torch.equal(again.raw(1)[0], synthetic.raw(1)[0])  # same seed, same anomaly, any order
    assert not torch.equal(other.raw(1)[1], synthetic.raw(1)[1])


def test_fit_with_only_normal_images_gets_an_f1_threshold(tmp_path):
    root = make_mvtec(tmp_path / "data", n_train=16)
    output = tmp_path / "run"
    with single_thread():
        code = main(
            ["fit", "--model", "padim", "--data", f"mvtec:{root}", "--output", str(output), "--image-size", "32"]
            + ["--val-split", "synthetic:0.5", "--no-progress", "--heatmaps", "2"]
        )
    assert code == 0
    report = json.loads((output / "report.json").read_text())
    assert report["calibration"]["image_threshold_rule"] == "f1"
    assert report["calibration"]["pixel_threshold_rule"] == "f1"
    metrics = json.loads((output / "metrics.json").read_text())
    assert 0.0 <= metrics["image_f1_at_threshold"] <= 1.0
