"""Frames in any form (path, PIL image, NumPy array, torch tensor) -> exactly what the dataset gives.

:func:`to_rgb_image` turns a frame into the RGB 8-bit picture :func:`adcore.data.read_image`
would have decoded from a file; :func:`model_input` resizes it to the detector's input as
:class:`adcore.data.AnomalyDataset` does (Pillow bilinear, then uint8). A camera frame scored
through these gets the same score as the same image scored by ``adcore predict``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from adcore.data.image_io import ImageReadError, _to_8bit, read_image, resized_pixels


# -- frames in any form -> the RGB picture a file would have given -----------------------------
def _pil_to_rgb(image: Image.Image, name: str) -> Image.Image:
    """The conversions of :func:`read_image` after decoding (wide modes, alpha over black)."""
    image = _to_8bit(Path(name), image)
    if image.size[0] == 0 or image.size[1] == 0:
        raise ImageReadError(f"{name}: image is empty ({image.size[0]}x{image.size[1]})")
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def _array_to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """uint8 as is; floats in 0..1 (max <= 1) or 0..255; uint16 by its range; bool as 0/255."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ImageReadError(f"{name}: frame contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 255:
            raise ImageReadError(f"{name}: float frame values must lie in 0..1 or 0..255, got {low:g}..{high:g}")
        scale = 255.0 if high <= 1.0 else 1.0
        return np.clip(np.rint(array.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    if array.dtype == np.uint16:
        return np.clip(np.rint(array.astype(np.float64) / 65535.0 * 255.0), 0, 255).astype(np.uint8)
    if array.dtype.kind in "iu":
        if array.min() < 0 or array.max() > 255:
            raise ImageReadError(f"{name}: integer frame values must lie in 0..255, got {array.min()}..{array.max()}")
        return array.astype(np.uint8)
    raise ImageReadError(f"{name}: unsupported frame dtype {array.dtype}")


def _numpy_to_pil(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        mode = "L"
    elif array.ndim == 3 and array.shape[-1] in (3, 4):
        mode = "RGB" if array.shape[-1] == 3 else "RGBA"
    else:
        raise ImageReadError(f"{name}: expected a frame of shape (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageReadError(f"{name}: frame is empty ({array.shape[1]}x{array.shape[0]})")
    return _pil_to_rgb(Image.fromarray(np.ascontiguousarray(_array_to_uint8(array, name)), mode=mode), name)


def to_rgb_image(image: Any, name: str = "<frame>") -> Image.Image:
    """A path, PIL image, NumPy array or torch tensor as an 8-bit RGB PIL image.

    * path (``str``/``os.PathLike``): read as the dataset reads files (EXIF orientation, 16-bit, alpha);
    * PIL image: any mode, converted as a file of that mode would be;
    * NumPy array ``(H, W, 3)`` RGB (or ``(H, W)``, ``(H, W, 1)`` grey, ``(H, W, 4)`` RGBA):
      ``uint8``; float in 0..1 (when its maximum is at most 1) or 0..255; ``uint16`` scaled by 65535;
    * torch tensor ``(3, H, W)`` (channels first, the torch convention), ``(1, 3, H, W)`` or
      ``(H, W, 3)``, with the same dtype rules.

    Channels are RGB: an OpenCV frame (BGR) needs ``frame[..., ::-1]`` first.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, name)
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 4:
            if tensor.shape[0] != 1:
                raise ImageReadError(f"{name}: expected one image, got a batch of {tensor.shape[0]}")
            tensor = tensor[0]
        if tensor.ndim == 3 and tensor.shape[0] in (1, 3, 4) and tensor.shape[-1] not in (1, 3, 4):
            tensor = tensor.permute(1, 2, 0)
        elif tensor.ndim == 3 and tensor.shape[0] in (1, 3, 4) and tensor.shape[-1] in (1, 3, 4):
            tensor = tensor.permute(1, 2, 0)  # ambiguous (tiny image): channels first, as torch does
        if tensor.dtype == torch.bfloat16 or tensor.dtype == torch.float16:
            tensor = tensor.float()
        return _numpy_to_pil(tensor.numpy(), name)
    if isinstance(image, np.ndarray):
        return _numpy_to_pil(image, name)
    raise TypeError(f"cannot score a {type(image).__name__}: pass a path, PIL image, NumPy array or torch tensor")


def model_input(image: Image.Image, image_size: tuple[int, int]) -> torch.Tensor:
    """The uint8 ``(3, h, w)`` tensor :class:`AnomalyDataset` makes of ``image`` (same resize, same rounding)."""
    return resized_pixels(image, image_size)
