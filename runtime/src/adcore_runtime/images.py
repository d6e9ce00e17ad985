"""Decode and resize images exactly as adcore's dataset does, with Pillow and numpy only.

adcore (``adcore.data.image_io.read_image`` and ``AnomalyDataset``) decodes any file to 8-bit
RGB: EXIF orientation applied, 16-bit images scaled by their type's range, float images by
their own min/max, transparent pixels laid over black. It then resizes with Pillow's bilinear
filter to the model's (width, height) and divides the uint8 pixels by 255. Doing the same
steps here gives the exported graph the very same input, bit for bit.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

WIDE_MODES = {"I;16", "I;16B", "I;16L", "I", "F"}
_EXIF_WARNINGS = r"(Corrupt EXIF data|Tag data larger than file|Possibly corrupt EXIF)"

ImageInput = str | os.PathLike | Image.Image | np.ndarray


class ImageError(ValueError):
    """An image that cannot be read or used, with the file (or the array's shape) named."""


def _exif_transpose(image: Image.Image) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - as adcore: an unreadable EXIF block leaves the pixels as stored
        return image


def _to_8bit(image: Image.Image, where: str) -> Image.Image:
    """16-bit images scaled by their type's range; float images by their own min/max (as adcore)."""
    if image.mode not in WIDE_MODES:
        return image
    array = np.asarray(image)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ImageError(f"{where}: float image has NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        array = (array.astype(np.float64) - low) / max(high - low, 1e-12) * 255.0
    else:
        max_value = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = array.astype(np.float64) / max_value * 255.0
    return Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image, where: str = "image") -> Image.Image:
    """Any Pillow image as RGB, the way adcore converts decoded files."""
    image = _to_8bit(image, where)
    if image.size[0] == 0 or image.size[1] == 0:
        raise ImageError(f"{where}: image is empty ({image.size[0]}x{image.size[1]})")
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def read_image(path: str | os.PathLike) -> Image.Image:
    """Decode a file as RGB, upright per its EXIF tag."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: file not found" if not path.exists() else f"{path}: not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", message=_EXIF_WARNINGS, category=UserWarning)
            with Image.open(path) as handle:
                handle.load()
                image = _exif_transpose(handle)
                image.load()
    except Exception as exc:  # noqa: BLE001 - every decoding failure names the file
        raise ImageError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None
    return to_rgb(image, str(path))


def as_rgb_image(item: ImageInput) -> tuple[Image.Image, str | None]:
    """A path, Pillow image or uint8 array (H, W) / (H, W, 3) / (H, W, 4) as an RGB image, and its path."""
    if isinstance(item, (str, os.PathLike)):
        return read_image(item), str(item)
    if isinstance(item, Image.Image):
        return to_rgb(item), None
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise ImageError(
                f"array of dtype {item.dtype}: pass 8-bit images as uint8 (H, W, 3), "
                "or model input (N, 3, H, W) float32 in 0..1 to Model.run"
            )
        if item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (3, 4)):
            return to_rgb(Image.fromarray(item)), None
        raise ImageError(f"array of shape {item.shape}: expected (H, W), (H, W, 3) or (H, W, 4) uint8")
    raise ImageError(f"cannot score a {type(item).__name__}: pass a path, a PIL image or a uint8 array")


def preprocess(image: Image.Image, image_size: tuple[int, int]) -> np.ndarray:
    """RGB image -> float32 (3, H, W) in 0..1 at ``image_size`` (height, width), as adcore's dataset."""
    height, width = image_size
    resized = image.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)
    return pixels.astype(np.float32) / np.float32(255.0)
