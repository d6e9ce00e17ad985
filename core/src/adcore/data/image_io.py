"""Read any image file as 8-bit RGB (and masks as 0/1), with errors that name the file."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
WIDE_MODES = {"I;16", "I;16B", "I;16L", "I", "F"}  # 16/32-bit integer and float images


class ImageReadError(ValueError):
    """An image or mask file is missing, corrupt or in a form we cannot use."""


def _open(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()  # decode now, so truncated files fail here and name the file
        return image
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{path}: cannot decode image ({exc})") from None


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit images are scaled by their type's range (not clipped); float images by their own min/max."""
    if image.mode in WIDE_MODES:
        array = np.asarray(image)
        if array.dtype.kind == "f":
            low, high = float(np.nanmin(array)), float(np.nanmax(array))
            array = (array - low) / max(high - low, 1e-12) * 255.0
        else:
            max_value = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
            array = array.astype(np.float64) / max_value * 255.0
        return Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), mode="L")
    return image


def read_image(path: str | os.PathLike) -> Image.Image:
    """Open an image of any mode (L, P, RGB, RGBA, CMYK, 16-bit, float) as RGB."""
    path = Path(path)
    image = _to_8bit(_open(path))
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    if image.size[0] == 0 or image.size[1] == 0:
        raise ImageReadError(f"{path}: image is empty ({image.size[0]}x{image.size[1]})")
    return image.convert("RGB")


def read_mask(path: str | os.PathLike) -> Image.Image:
    """Open a ground-truth mask as mode "L" with values 0 or 255 (anything > 0 is anomalous)."""
    path = Path(path)
    image = _open(path)
    if image.mode in WIDE_MODES:
        # Threshold the raw values: scaling to 8 bits first would round small labels
        # (1, 2, ... in a 16-bit label mask) to 0, and turn a constant float mask into 0.
        return Image.fromarray(np.where(np.asarray(image) > 0, 255, 0).astype(np.uint8))
    return image.convert("L").point(lambda v: 255 if v > 0 else 0)


def list_images(directory: str | os.PathLike) -> list[Path]:
    """Image files of a folder, sorted by name, ignoring hidden files."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory")
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
