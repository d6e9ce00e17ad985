"""Test helpers: synthetic images and datasets (smooth textures, anomalies are bright
squares), and a single-threaded torch context."""

from __future__ import annotations

import contextlib

import torch
from adcore.data.synthetic import anomalous_image, make_mvtec, normal_image, save_png

SIZE = 64

__all__ = ["SIZE", "anomalous_image", "make_mvtec", "normal_image", "save_png", "single_thread"]


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
