"""WinCLIP on the real MVTec bottle images through the command line, with a tiny open_clip file.

No CLIP weights exist offline here, so these tests check the machinery, not the paper's
accuracy. The tiny model (``adcore_winclip.testing``: ViT 240 px / 16 px patches, width 64,
2 layers; text width 64, 2 layers) is saved to a file and passed the way a user passes real
weights: ``--param clip_model=<config .json> --weights <file>``.

1. Zero-shot ``adcore predict --model winclip`` without a checkpoint, on bottle images with
   and without a pasted white square: the tiny model was aligned to exactly that concept
   (white square = "damaged object" of the prompt ensemble), so the squares must score
   above the clean images, through the real prompts, tokenizer, windows and CLI.
2. Few-shot ``adcore fit --model winclip --param k_shot=4`` on the real bottle data (random
   tiny weights: the few-shot part is a nearest-reference search over random ViT features),
   then the checkpoint records CLIP instead of copying it, and ``adcore predict --checkpoint``
   reproduces the fit's scores. The pixel AUROC floor (0.55; measured 0.64) is what random
   features with nearest references give on bottle's defects; a map that ignores the
   references (constant: 0.5) or inverts them fails it.
"""

import csv
import json

import numpy as np
import pytest
import safetensors
import torch
from adcore.checkpoint import read_metadata
from adcore.cli import main
from adcore.metrics import image_auroc
from adcore_winclip.testing import write_tiny_clip
from PIL import Image

pytestmark = pytest.mark.e2e


def _scores(table) -> dict[str, float]:
    with open(table) as file:
        return {row["path"]: float(row["score"]) for row in csv.DictReader(file)}


def test_zero_shot_predict_without_a_checkpoint_finds_pasted_white_squares(bottle_dir, tmp_path):
    tiny = write_tiny_clip(tmp_path / "clip", aligned=True)
    images = tmp_path / "images"
    images.mkdir()
    goods = sorted((bottle_dir / "test" / "good").glob("*.png"))[:5]
    for i, path in enumerate(goods):
        pixels = np.asarray(Image.open(path).convert("RGB")).copy()
        Image.fromarray(pixels).save(images / f"clean_{i}.png")
        side = pixels.shape[0] // 6
        top, left = pixels.shape[0] // 3 + 20 * i, pixels.shape[1] // 4 + 30 * i
        pixels[top : top + side, left : left + side] = 255
        Image.fromarray(pixels).save(images / f"square_{i}.png")
    output = tmp_path / "predictions"
    argv = ["predict", "--model", "winclip", "--param", "class_name=bottle", "--param", f"clip_model={tiny.config}"]
    argv += ["--weights", str(tiny.weights), str(images), "--output", str(output), "--no-progress"]
    assert main(argv) == 0
    scores = _scores(output / "predictions.csv")
    assert len(scores) == 10 and all(np.isfinite(list(scores.values())))
    labels = [int("square" in path) for path in scores]
    assert image_auroc(torch.tensor(list(scores.values())), torch.tensor(labels)) >= 0.9, scores


def test_few_shot_fit_on_bottle_then_predict_from_the_checkpoint(bottle_dir, tmp_path):
    tiny = write_tiny_clip(tmp_path / "clip", aligned=False)
    output = tmp_path / "fit"
    argv = ["fit", "--model", "winclip", "--param", "k_shot=4", "--param", "class_name=bottle"]
    argv += ["--param", f"clip_model={tiny.config}", "--weights", str(tiny.weights), "--data", f"mvtec:{bottle_dir}"]
    argv += ["--val-split", "none", "--heatmaps", "2", "--output", str(output), "--no-progress"]
    assert main(argv) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    report = json.loads((output / "report.json").read_text())
    assert report["images"]["train"] == 4  # k_shot references, chosen with the seed
    assert report["weights_sources"]["clip"] == f"path:{tiny.weights}"
    assert metrics["pixel_auroc"] >= 0.55, metrics

    checkpoint = output / "model.safetensors"
    with safetensors.safe_open(str(checkpoint), "pt") as file:
        keys = list(file.keys())
    assert not any(key.startswith("clip.") for key in keys) and "reference_windows_3" in keys
    assert read_metadata(checkpoint)["external_modules"] == {"clip": f"path:{tiny.weights}"}

    fitted = _scores(output / "predictions.csv")
    some = sorted(fitted)[:3]
    again = tmp_path / "again"
    assert main(["predict", "--checkpoint", str(checkpoint), *some, "--output", str(again), "--no-progress"]) == 0
    for path, score in _scores(again / "predictions.csv").items():
        assert score == pytest.approx(fitted[path], abs=1e-5)
