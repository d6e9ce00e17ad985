"""Test helpers: synthetic images and datasets (smooth textures, anomalies are bright
squares), and a single-threaded torch context."""

from __future__ import annotations

from adcore.data.synthetic import anomalous_image, make_mvtec, normal_image, save_png
from adcore.threads import torch_threads

SIZE = 64

__all__ = ["SIZE", "anomalous_image", "make_mvtec", "normal_image", "save_png", "single_thread"]


def single_thread():
    """One torch thread: the tests' tensors are tiny and the machine is shared."""
    return torch_threads(1)
