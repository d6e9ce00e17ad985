"""Test helpers: synthetic images and datasets (smooth textures, anomalies are bright
squares), and a single-threaded torch context."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

SIZE = 64


def normal_image(seed: int, size: int = SIZE) -> np.ndarray:
    """A smooth texture: seeded coarse noise, upsampled and blurred, on a gentle gradient."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(90, 150, size=(8, 8, 3)).astype(np.uint8)
    image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    ramp = np.linspace(-15, 15, size)[None, :, None]
    return np.clip(np.asarray(image, dtype=np.float64) + ramp, 0, 255).astype(np.uint8)


def anomalous_image(seed: int, size: int = SIZE, patch: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """A normal texture with a bright square; returns (image, mask uint8 0/255)."""
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


def make_mvtec(root: Path, n_train: int = 12, n_good: int = 4, n_bad: int = 4, defect: str = "scratch") -> Path:
    """A tiny MVTec AD category: train/good, test/good, test/<defect>, ground_truth/<defect>."""
    for i in range(n_train):
        save_png(root / "train" / "good" / f"{i:03d}.png", normal_image(i))
    for i in range(n_good):
        save_png(root / "test" / "good" / f"{i:03d}.png", normal_image(100 + i))
    for i in range(n_bad):
        image, mask = anomalous_image(i)
        save_png(root / "test" / defect / f"{i:03d}.png", image)
        save_png(root / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return root


@contextlib.contextmanager
def single_thread():
    """One torch thread: the tests' tensors are tiny, the machine is shared, and multi-threaded
    CPU kernels on a busy machine can be 100x slower (threads waiting for each other's time
    slices)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
