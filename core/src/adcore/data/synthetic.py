"""Tiny synthetic datasets in MVTec AD layout, for tests and plugin conformance checks.

Normal images are smooth seeded textures on a gentle gradient; anomalous ones carry a
saturated white square (an obvious defect any working detector must notice), with its
mask. Deterministic: the same seeds give the same files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def normal_image(seed: int, size: int = 64) -> np.ndarray:
    """A smooth texture (H, W, 3) uint8: seeded coarse noise, upsampled and blurred, on a ramp."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(90, 150, size=(8, 8, 3)).astype(np.uint8)
    image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    ramp = np.linspace(-15, 15, size)[None, :, None]
    return np.clip(np.asarray(image, dtype=np.float64) + ramp, 0, 255).astype(np.uint8)


def anomalous_image(seed: int, size: int = 64, patch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A normal texture with a white square (default side: size // 4 - 2); returns (image, mask 0/255)."""
    patch = patch or max(4, size // 4 - 2)
    rng = np.random.default_rng(10_000 + seed)
    image = normal_image(seed + 500, size)
    top, left = (int(v) for v in rng.integers(4, size - patch - 4, size=2))
    image[top : top + patch, left : left + patch] = 255
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[top : top + patch, left : left + patch] = 255
    return image, mask


def save_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_mvtec(
    root: Path, n_train: int = 12, n_good: int = 4, n_bad: int = 4, defect: str = "scratch", size: int = 64
) -> Path:
    """Write a tiny MVTec AD category: train/good, test/good, test/<defect>, ground_truth/<defect>."""
    root = Path(root)
    for i in range(n_train):
        save_png(root / "train" / "good" / f"{i:03d}.png", normal_image(i, size))
    for i in range(n_good):
        save_png(root / "test" / "good" / f"{i:03d}.png", normal_image(100 + i, size))
    for i in range(n_bad):
        image, mask = anomalous_image(i, size)
        save_png(root / "test" / defect / f"{i:03d}.png", image)
        save_png(root / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return root
