"""Pictures a person can look at: the image, its heatmap overlay, the predicted region."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from adcore.io import atomic_write

# A perceptually ordered dark-blue -> cyan -> yellow -> red ramp (anchors of a "turbo"-like map).
_ANCHORS = np.array(
    [
        [48, 18, 59],
        [70, 107, 227],
        [40, 188, 235],
        [50, 241, 152],
        [164, 252, 60],
        [240, 205, 55],
        [250, 125, 30],
        [180, 25, 5],
    ],
    dtype=np.float64,
)


def colorize(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (H, W) to uint8 RGB (H, W, 3)."""
    positions = np.clip(values, 0.0, 1.0) * (len(_ANCHORS) - 1)
    low = np.floor(positions).astype(int).clip(0, len(_ANCHORS) - 2)
    weight = (positions - low)[..., None]
    return ((1 - weight) * _ANCHORS[low] + weight * _ANCHORS[low + 1]).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean mask."""
    padded = np.pad(mask, 1, mode="edge")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def render_panel(
    image: np.ndarray,
    normalized_map: np.ndarray | None,
    score: float,
    is_anomalous: bool,
    gt_mask: np.ndarray | None = None,
) -> Image.Image:
    """[image | heatmap overlay | predicted region outlined]; maps are normalised (0.5 = threshold)."""
    height, width = image.shape[:2]
    tiles = [image]
    if normalized_map is not None:
        heat = colorize(normalized_map)
        alpha = (0.15 + 0.6 * np.clip(normalized_map, 0.0, 1.0))[..., None]  # hot regions stand out
        tiles.append(((1 - alpha) * image + alpha * heat).astype(np.uint8))
        outlined = image.copy()
        outlined[_outline(normalized_map >= 0.5)] = (255, 0, 0)
        if gt_mask is not None:
            outlined[_outline(gt_mask > 0)] = (0, 255, 0)
        tiles.append(outlined)
    banner = 22
    panel = Image.new("RGB", (width * len(tiles), height + banner), (0, 0, 0))
    for i, tile in enumerate(tiles):
        panel.paste(Image.fromarray(tile), (i * width, banner))
    verdict = "ANOMALOUS" if is_anomalous else "normal"
    text = f"{verdict}  score {score:.3f} (threshold 0.5)"
    if normalized_map is not None:
        text += "   red: predicted region" + ("   green: ground truth" if gt_mask is not None else "")
    ImageDraw.Draw(panel).text((4, 4), text, fill=(255, 80, 80) if is_anomalous else (120, 255, 120))
    return panel


def save_panel(path: str | os.PathLike, panel: Image.Image) -> Path:
    return atomic_write(path, lambda tmp: panel.save(tmp, format="PNG"))


def tensor_to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """A (3, H, W) uint8 tensor as an (H, W, 3) array."""
    return pixels.permute(1, 2, 0).cpu().numpy()


def save_loss_curve(history: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Plot the training loss per epoch (and validation image AUROC when recorded) to a PNG.

    ``history`` is the engine's per-epoch records (``epoch``, ``loss``, optional
    ``val_image_auroc``). The loss axis is logarithmic when the loss stays positive, since
    flow and distillation losses fall by orders of magnitude.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("no training history to plot (the detector was not trained with gradients)")
    epochs = [record["epoch"] for record in history]
    losses = [record["loss"] for record in history]
    figure, axis = plt.subplots(figsize=(6, 3.6), dpi=110)
    axis.plot(epochs, losses, marker="o", markersize=3, color="tab:blue", label="training loss")
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss (mean over batches)")
    if min(losses) > 0:
        axis.set_yscale("log")
    axis.grid(alpha=0.3)
    validation = [(r["epoch"], r["val_image_auroc"]) for r in history if "val_image_auroc" in r]
    if validation:
        right = axis.twinx()
        right.plot(*zip(*validation), marker="s", markersize=3, color="tab:orange", label="validation image AUROC")
        right.set_ylabel("validation image AUROC")
        right.set_ylim(0, 1.02)
    axis.set_title(title or "training loss")
    figure.tight_layout()
    try:
        return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    finally:
        plt.close(figure)
