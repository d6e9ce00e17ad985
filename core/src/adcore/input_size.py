"""The input size a detector gets for a dataset: the images' own aspect ratio, unless asked otherwise.

Resizing every image to a square squashes non-square data (KolektorSDD's commutators are
1:2.5, MVTec LOCO's juice bottle 1:2): a thin crack gets thinner, and a detector whose
backbone was trained on undistorted objects sees distorted ones. So by default the short side
gets the detector's own size (its config's ``image_size``, e.g. 256) and the long side follows
the median aspect ratio of the training images, rounded to the detector's ``size_multiple``
(the stride its features and decoders need). Square data keeps its square size exactly.

A detector whose architecture needs square inputs (GANomaly's encoder halves the image down to
4 x 4) sets ``square_input = True`` and is left alone; ``--image-size N`` (square) or
``--image-size H,W`` overrides the choice.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

#: Files whose header is read to measure the aspect ratio: spread evenly over the data.
ASPECT_SAMPLE = 64


def parse_image_size(text: str) -> tuple[int, int]:
    """``"256"`` -> (256, 256); ``"640,256"`` -> (640, 256), i.e. height, width."""
    parts = [p.strip() for p in str(text).replace("x", ",").split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"--image-size {text!r}: give N (a square) or H,W in pixels, e.g. 256 or 640,256")
    return values[0], values[1]


def median_aspect_ratio(paths: Sequence[str | Path], sample: int = ASPECT_SAMPLE) -> float:
    """Median height / width of up to ``sample`` images, read from their headers only (no decoding)."""
    from PIL import Image, UnidentifiedImageError

    if not paths:
        raise ValueError("no images to measure an aspect ratio on")
    step = max(1, len(paths) // sample)
    ratios = []
    for path in list(paths)[::step][:sample]:
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, UnidentifiedImageError) as exc:
            raise ValueError(f"{path}: cannot read the image header ({exc})") from None
        if width < 1 or height < 1:
            raise ValueError(f"{path}: image has no pixels ({width}x{height})")
        ratios.append(height / width)
    return float(statistics.median(ratios))


def aspect_preserving_size(base_size: tuple[int, int], aspect: float, multiple: int = 32) -> tuple[int, int]:
    """(height, width): the short side ``min(base_size)``, the long side ``aspect`` times it, rounded to ``multiple``.

    ``aspect`` is height / width. Rounding goes to the nearest multiple (at least one), so
    data within a few per cent of square keeps ``base_size``'s short side on both axes.
    """
    short = min(base_size)
    long_side = short * max(aspect, 1.0 / aspect)
    long_side = max(multiple, round(long_side / multiple) * multiple)
    long_side = max(long_side, short)
    return (long_side, short) if aspect >= 1.0 else (short, long_side)


def input_size_for(detector_class: type, base_size: tuple[int, int], paths: Sequence[str | Path]) -> tuple[int, int]:
    """The default input size of ``detector_class`` on images ``paths``: their aspect kept, unless it needs squares."""
    if getattr(detector_class, "square_input", False):
        return tuple(base_size)
    multiple = int(getattr(detector_class, "size_multiple", 32))
    return aspect_preserving_size(tuple(base_size), median_aspect_ratio(paths), multiple)


def default_input_size(detector_class: type, records: Sequence) -> tuple[int, int] | None:
    """What ``adcore fit`` gives ``detector_class`` on training ``records`` when no size is asked for.

    None when the detector has no ``image_size`` parameter (its input size is fixed, e.g.
    WinCLIP's CLIP model) or the records are not image files (video frames).
    """
    import attrs

    from adcore.data.image_io import IMAGE_SUFFIXES

    config_class = getattr(detector_class, "Config", None)
    if not attrs.has(config_class) or "image_size" not in attrs.fields_dict(config_class):
        return None
    paths = [r.path for r in records if Path(str(getattr(r, "path", ""))).suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        return None
    return input_size_for(detector_class, tuple(config_class().image_size), paths)
