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
    draw = ImageDraw.Draw(panel)
    if normalized_map is not None:
        legend = "   red: predicted region" + ("   green: ground truth" if gt_mask is not None else "")
        if draw.textlength(text + legend) <= panel.width - 8:  # narrow panels (tall images) keep the verdict only
            text += legend
    draw.text((4, 4), text, fill=(255, 80, 80) if is_anomalous else (120, 255, 120))
    return panel


#: zlib level of panel PNGs: 4 encodes about twice as fast as Pillow's default 6 for ~1 % larger
#: files (photographs barely compress further); the pixels are the same.
PANEL_COMPRESS_LEVEL = 4


def save_panel(path: str | os.PathLike, panel: Image.Image) -> Path:
    return atomic_write(path, lambda tmp: panel.save(tmp, format="PNG", compress_level=PANEL_COMPRESS_LEVEL))


def tensor_to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """A (3, H, W) uint8 tensor as an (H, W, 3) array."""
    return pixels.permute(1, 2, 0).cpu().numpy()


_NOT_LOSSES = {"stage", "epoch", "step", "seconds", "val_image_auroc"}


def save_loss_curve(history: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Plot every training loss per epoch (and validation image AUROC when recorded) to a PNG.

    ``history`` is the engine's per-epoch records (``stage``, ``epoch``, ``step``, one value
    per named loss, optional ``val_image_auroc``). The x axis counts epochs across stages, so
    a detector with several stages draws them one after the other. The loss axis is
    logarithmic when every loss stays positive (flow and distillation losses fall by orders
    of magnitude).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("no training history to plot (the detector was not trained with gradients)")
    x = list(range(1, len(history) + 1))
    names = [k for k in dict.fromkeys(k for r in history for k in r) if k not in _NOT_LOSSES]
    figure, axis = plt.subplots(figsize=(6, 3.6), dpi=110)
    values = []
    for name in names:
        points = [(i, r[name]) for i, r in zip(x, history) if isinstance(r.get(name), (int, float))]
        if points:
            values += [v for _, v in points]
            label = "training loss" if name == "loss" else f"{name} loss"
            axis.plot(*zip(*points), marker="o", markersize=3, label=label)
    stages = [r.get("stage") for r in history]
    for i in range(1, len(stages)):
        if stages[i] != stages[i - 1]:
            axis.axvline(x[i] - 0.5, color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("epoch" if len(set(stages)) <= 1 else "epoch (stages one after another)")
    axis.set_ylabel("loss (mean over batches)")
    if values and min(values) > 0:
        axis.set_yscale("log")
    axis.grid(alpha=0.3)
    if len(names) > 1:
        axis.legend(fontsize=7, loc="upper right")
    validation = [(i, r["val_image_auroc"]) for i, r in zip(x, history) if r.get("val_image_auroc") is not None]
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
