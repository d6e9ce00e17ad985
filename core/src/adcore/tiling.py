"""Images far larger than the model's input, scored as overlapping tiles and stitched back.

:func:`tile_boxes` and :func:`score_image` score an image as tiles of ``tile`` pixels every
``stride`` pixels, each resized to the input (:func:`adcore.frames.model_input`); tile maps are
resized back to their tile, overlaps averaged, and the image score is the maximum over tiles.
One tile covering the whole image is the untiled computation, exactly. :class:`TileDataset`
fits a detector on the tiles it will see (``adcore fit --tile``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from PIL import Image

from adcore.data.image_io import read_image
from adcore.frames import model_input


# -- tiles ----------------------------------------------------------------------------------------
def _starts(length: int, size: int, stride: int) -> list[int]:
    if size >= length:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)  # the last tile ends at the border: every pixel is covered
    return starts


def tile_boxes(width: int, height: int, size: int, stride: int | None = None) -> list[tuple[int, int, int, int]]:
    """Boxes ``(x0, y0, x1, y1)`` of ``size``-pixel tiles every ``stride`` pixels covering the image.

    A tile is clipped to the image where the image is smaller than ``size``; the last tile of
    each row and column is moved to end exactly at the border.
    """
    stride = size if stride is None else stride
    if size < 1 or stride < 1:
        raise ValueError(f"tile size and stride must be positive, got {size} and {stride}")
    if stride > size:
        raise ValueError(f"tile stride {stride} exceeds the tile size {size}: pixels between tiles would not be scored")
    tile_w, tile_h = min(size, width), min(size, height)
    return [(x, y, x + tile_w, y + tile_h) for y in _starts(height, size, stride) for x in _starts(width, size, stride)]


def resize_map(values: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A ``(h, w)`` or ``(1, 1, h, w)`` map resized bilinearly to ``(height, width)`` (float32)."""
    values = values.float().reshape(1, 1, *values.shape[-2:])
    if tuple(values.shape[-2:]) == (height, width):
        return values[0, 0].clone()
    antialias = height < values.shape[-2] or width < values.shape[-1]
    return F.interpolate(values, size=(height, width), mode="bilinear", align_corners=False, antialias=antialias)[0, 0]


@attrs.define
class ScoredImage:
    """Raw results of one image: score, map at the input size and at the image's own size, regions."""

    score: float
    model_map: torch.Tensor | None  # (h, w) at the detector's input size
    full_map: torch.Tensor | None  # (H, W) at the image's own size
    regions: torch.Tensor | None  # (K, 5) x0, y0, x1, y1, score in the image's own pixels
    size: tuple[int, int]  # (width, height)
    tiles: int = 1


def _device(detector) -> torch.device:
    return detector.is_fitted.device


@torch.inference_mode()
def score_image(
    detector,
    image: Image.Image,
    tile: int | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> ScoredImage:
    """Score ``image`` (RGB PIL) whole, or as tiles of ``tile`` pixels every ``stride`` pixels.

    Tiles go through the detector ``batch_size`` at a time, on the detector's device, each
    batch inside ``autocast()`` when given (the Engine's bf16 precision).
    """
    spec = detector.input_spec
    width, height = image.size
    boxes = [(0, 0, width, height)] if tile is None else tile_boxes(width, height, tile, stride)
    device = _device(detector)
    detector.eval()
    scores, full_sum, count, model_map, regions = [], None, None, None, []
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start : start + batch_size]
        pixels = torch.stack(
            [model_input(image if box == (0, 0, width, height) else image.crop(box), spec.image_size) for box in chunk]
        )
        with autocast() if autocast is not None else contextlib.nullcontext():
            output = detector.predict(spec.normalize(pixels.to(device)))
        scores.append(output.pred_score.float().cpu())
        maps = None if output.anomaly_map is None else output.anomaly_map.float().cpu()
        for i, (x0, y0, x1, y1) in enumerate(chunk):
            if maps is not None:
                if len(boxes) == 1:
                    model_map = maps[i, 0]
                    full_sum, count = resize_map(maps[i, 0], height, width), None
                else:
                    if full_sum is None:
                        full_sum = torch.zeros(height, width)
                        count = torch.zeros(height, width)
                    full_sum[y0:y1, x0:x1] += resize_map(maps[i, 0], y1 - y0, x1 - x0)
                    count[y0:y1, x0:x1] += 1
            if output.regions is not None:
                boxes_i = output.regions[i].float().cpu().clone().reshape(-1, 5)
                in_h, in_w = spec.image_size
                boxes_i[:, [0, 2]] = boxes_i[:, [0, 2]] * ((x1 - x0) / in_w) + x0
                boxes_i[:, [1, 3]] = boxes_i[:, [1, 3]] * ((y1 - y0) / in_h) + y0
                regions.append(boxes_i)
    full_map = None
    if full_sum is not None:
        full_map = full_sum if count is None else full_sum / count
        if model_map is None:
            model_map = resize_map(full_map, *spec.image_size)
    return ScoredImage(
        score=float(torch.cat(scores).max()),
        model_map=model_map,
        full_map=full_map,
        regions=torch.cat(regions) if regions else None,
        size=(width, height),
        tiles=len(boxes),
    )


# -- training on tiles -------------------------------------------------------------------------------
def oriented_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file as :func:`read_image` will return it (EXIF rotation applied).

    Reads only the header; a file Pillow cannot open lazily is decoded in full.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112)
        return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    except Exception:  # noqa: BLE001 - let read_image produce its precise error
        return read_image(path).size


class TileDataset:
    """Every tile of every image as one image, resized to the input exactly as :func:`score_image` does.

    For fitting a detector on tiles (``adcore fit --tile``): the model then learns what it will
    see when tiled images are scored. Each tile's ``path`` is ``FILE#x0,y0`` so per-image
    caches (frozen features) keep tiles apart. The last decoded image is kept, so reading the
    tiles of an image in order decodes it once.
    """

    def __init__(self, records, input_spec, size: int, stride: int | None = None, cache: bool = False) -> None:
        if not records:
            raise ValueError("dataset is empty: no images found")
        self.spec = input_spec
        self.has_masks = False
        self.tiles: list[tuple[Any, tuple[int, int, int, int]]] = []
        for record in records:
            width, height = oriented_size(record.path)
            self.tiles += [(record, box) for box in tile_boxes(width, height, size, stride)]
        self.records = [record for record, _ in self.tiles]
        self.cache = cache
        self._cache: dict[int, torch.Tensor] = {}
        self._last: tuple[str, Image.Image] | None = None

    def __len__(self) -> int:
        return len(self.tiles)

    def raw(self, index: int) -> tuple[torch.Tensor, None]:
        if index in self._cache:
            return self._cache[index], None
        record, box = self.tiles[index]
        key = str(record.path)
        if self._last is None or self._last[0] != key:
            self._last = (key, read_image(record.path))
        image = self._last[1]
        width, height = image.size
        pixels = model_input(image if box == (0, 0, width, height) else image.crop(box), self.spec.image_size)
        if self.cache:
            self._cache[index] = pixels
        return pixels, None

    def __getitem__(self, index: int) -> dict:
        pixels, _ = self.raw(index)
        record, (x0, y0, _, _) = self.tiles[index]
        return {
            "image": self.spec.normalize(pixels),
            "mask": None,
            "label": -1 if record.label is None else record.label,
            "path": f"{record.path}#{x0},{y0}",
        }
