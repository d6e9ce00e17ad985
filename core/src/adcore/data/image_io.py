"""Read any image file as 8-bit RGB (and masks as 0/1), with errors that name the file."""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
WIDE_MODES = {"I;16", "I;16B", "I;16L", "I", "F"}  # 16/32-bit integer and float images
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_EXIF_WARNINGS = r"(Corrupt EXIF data|Tag data larger than file|Possibly corrupt EXIF)"


class ImageReadError(ValueError):
    """An image or mask file is missing, corrupt or in a form we cannot use."""


def _exif_transpose(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (as viewers do); an unreadable EXIF block leaves the pixels as stored."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF; it is ignored here
            return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block says nothing reliable about orientation
        return image


def _open(path: Path) -> Image.Image:
    """Decode a regular file in full, oriented by its EXIF tag; every failure is one ImageReadError."""
    try:
        # O_NONBLOCK: opening a named pipe must not wait for a writer; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | _NONBLOCK)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot open ({exc.strerror or exc})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImageReadError(f"{path}: not a regular file (a folder, pipe, device or socket)")
    with os.fdopen(fd, "rb") as handle:
        if _NONBLOCK:
            os.set_blocking(fd, True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                # A damaged EXIF block is skipped (orientation then as stored): no warning per file.
                warnings.filterwarnings("ignore", message=_EXIF_WARNINGS, category=UserWarning)
                image = Image.open(handle)
                image.load()  # decode now, so truncated files fail here and name the file
                return _exif_transpose(image)
        except UnidentifiedImageError:
            raise ImageReadError(f"{path}: not an image file (unknown or corrupt format)") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise ImageReadError(f"{path}: cannot decode image ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - a decoder tripping over hostile bytes (struct, index, ...)
            raise ImageReadError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None


def _finite(path: Path, image: Image.Image) -> np.ndarray:
    """The pixels of a 16/32-bit or float image, refusing NaN and infinity (nothing to scale them to)."""
    array = np.asarray(image)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(array.size - np.isfinite(array).sum())
        raise ImageReadError(f"{path}: float image has {bad} NaN or infinite values of {array.size}")
    return array


def _to_8bit(path: Path, image: Image.Image) -> Image.Image:
    """16-bit images are scaled by their type's range (not clipped); float images by their own min/max."""
    if image.mode in WIDE_MODES:
        array = _finite(path, image)
        if array.dtype.kind == "f":
            low, high = float(array.min()), float(array.max())
            array = (array.astype(np.float64) - low) / max(high - low, 1e-12) * 255.0
        else:
            max_value = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
            array = array.astype(np.float64) / max_value * 255.0
        return Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), mode="L")
    return image


def read_image(path: str | os.PathLike) -> Image.Image:
    """Open an image of any mode (L, P, RGB, RGBA, CMYK, 16-bit, float) as RGB, upright per its EXIF tag."""
    path = Path(path)
    image = _to_8bit(path, _open(path))
    if image.size[0] == 0 or image.size[1] == 0:
        raise ImageReadError(f"{path}: image is empty ({image.size[0]}x{image.size[1]})")
    try:
        if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (0, 0, 0, 255))
            image = Image.alpha_composite(background, image)
        return image.convert("RGB")
    except (OSError, ValueError) as exc:  # an odd mode or palette Pillow cannot convert
        raise ImageReadError(f"{path}: cannot convert {image.mode} image to RGB ({exc})") from None


def read_mask(path: str | os.PathLike) -> Image.Image:
    """Open a ground-truth mask as mode "L" with values 0 or 255 (anything > 0 is anomalous)."""
    path = Path(path)
    image = _open(path)
    if image.mode in WIDE_MODES:
        # Threshold the raw values: scaling to 8 bits first would round small labels
        # (1, 2, ... in a 16-bit label mask) to 0, and turn a constant float mask into 0.
        return Image.fromarray(np.where(_finite(path, image) > 0, 255, 0).astype(np.uint8))
    try:
        return image.convert("L").point(lambda v: 255 if v > 0 else 0)
    except (OSError, ValueError) as exc:
        raise ImageReadError(f"{path}: cannot convert {image.mode} mask to grey ({exc})") from None


def resized_pixels(image: Image.Image, image_size: tuple[int, int]):
    """``image`` resized (bilinear) to ``image_size`` (height, width): a contiguous uint8 (3, H, W) tensor.

    The one conversion every image path uses (datasets, video frames, ``predict_image``), so
    they give identical inputs. Contiguous on purpose: a permuted (H, W, 3) view makes every
    later elementwise op, the normalisation first, take torch's slow strided path (18x here).
    """
    import torch

    height, width = image_size
    resized = image.resize((width, height), Image.BILINEAR)
    return torch.from_numpy(np.ascontiguousarray(np.asarray(resized).transpose(2, 0, 1)))


def list_images(directory: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files of a folder (and its sub-folders when ``recursive``), sorted, ignoring hidden files.

    Only regular files (or links to them) count: a named pipe, socket or device named like an
    image is skipped, never opened (reading a pipe would wait forever).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory")
    candidates = directory.rglob("*") if recursive else directory.iterdir()
    return sorted(
        p
        for p in candidates
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )
