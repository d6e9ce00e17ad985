"""What the service scores with, and how an uploaded image becomes the picture a file would give.

A served model answers ``predict(image, tile, tile_stride, include_map)`` with the fields of
:meth:`adcore.image_prediction.ImagePrediction.to_json` (score, normalised score, verdict, map summary or
the whole map, regions), whatever it is loaded from:

* a checkpoint (``model.safetensors``): the full framework, :meth:`AnomalyDetector.predict_image`
  (tiling included);
* an exported file (``.onnx``, OpenVINO ``.xml``): :mod:`adcore_runtime` (no plugin code
  runs); its map, at the model's input size, is resized to the image's own size here.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from adcore.data.image_io import _EXIF_WARNINGS, ImageReadError, _exif_transpose
from adcore.frames import to_rgb_image
from adcore.image_prediction import ImagePrediction
from adcore.regions import find_regions
from adcore.tiling import resize_map, tile_boxes

#: A request may not ask for more tiles than this (a tiny tile on a huge image is a denial of service).
MAX_TILES = 1024


def decode_image_bytes(data: bytes, name: str = "upload") -> Image.Image:
    """Encoded image bytes (PNG, JPEG, TIFF, ...) -> RGB, with the conversions of ``read_image``."""
    if not data:
        raise ImageReadError(f"{name}: empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", message=_EXIF_WARNINGS, category=UserWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
            image = _exif_transpose(image)
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: not an image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{name}: cannot decode image ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - a decoder tripping over hostile bytes
        raise ImageReadError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") from None
    return to_rgb_image(image, name)


class CheckpointModel:
    """A checkpoint scored by the full framework."""

    kind = "checkpoint"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", name: str | None = None) -> None:
        from adcore.checkpoint import load_checkpoint
        from adcore.seed import resolve_device

        self.path = Path(path)
        self.detector, _ = load_checkpoint(self.path)
        self.detector.to(resolve_device(device)).eval()
        self.detector.check_fitted()
        self.name = name or self.path.parent.name or self.path.stem

    def describe(self) -> dict:
        post = self.detector.post_processor.summary()
        return {
            "name": self.name,
            "kind": self.kind,
            "path": str(self.path),
            "detector": self.detector.name,
            "input_size": list(self.detector.input_spec.image_size),
            "image_threshold": post["image_threshold"],
            "pixel_threshold": post["pixel_threshold"],
            "tiling": True,
        }

    def predict(self, image: Image.Image, tile: int | None = None, tile_stride: int | None = None) -> ImagePrediction:
        if tile is not None:
            count = len(tile_boxes(*image.size, tile, tile_stride))
            if count > MAX_TILES:
                raise ValueError(
                    f"tile {tile} with stride {tile_stride or tile} makes {count} tiles; at most {MAX_TILES}"
                )
        return self.detector.predict_image(image, tile=tile, tile_stride=tile_stride)


class ExportedModel:
    """An ``adcore export`` file scored by :mod:`adcore_runtime` (ONNX Runtime or OpenVINO)."""

    kind = "exported"

    def __init__(self, path: str | os.PathLike, name: str | None = None) -> None:
        try:
            import adcore_runtime
        except ImportError as exc:
            raise ImportError(f"{path}: serving exported files needs adcore-runtime ({exc})") from None
        self.path = Path(path)
        self.model = adcore_runtime.load(self.path)
        self.name = name or self.path.stem
        self._lock = threading.Lock()  # one inference session call at a time per model

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "path": str(self.path),
            "detector": self.model.detector,
            "input_size": list(self.model.image_size),
            "image_threshold": self.model.image_threshold,
            "pixel_threshold": self.model.pixel_threshold,
            "tiling": False,
        }

    def predict(self, image: Image.Image, tile: int | None = None, tile_stride: int | None = None) -> ImagePrediction:
        import torch

        if tile is not None:
            raise ValueError(f"model '{self.name}' is an exported file: tiling is served for checkpoints only")
        with self._lock:
            result = self.model.predict(image)
        width, height = image.size
        full = mask = normalized = None
        regions: list[dict] = []
        if result.anomaly_map is not None:
            full = resize_map(torch.from_numpy(np.asarray(result.anomaly_map, dtype=np.float32)), height, width).numpy()
            if self.model.pixel_threshold is not None:
                mask = full.astype(np.float64) >= self.model.pixel_threshold
                regions = find_regions(full, self.model.pixel_threshold)
        return ImagePrediction(
            score=float(result.score),
            normalized_score=result.normalized_score,
            is_anomalous=result.is_anomalous,
            anomaly_map=full,
            normalized_map=normalized,
            mask=mask,
            regions=regions,
            width=width,
            height=height,
        )


def load_models(
    checkpoints: list[str] | None = None, exported: list[str] | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """Served models by name (a checkpoint's folder name, an export's stem; repeated names get ``-2``, ...)."""
    models: dict[str, Any] = {}
    loaded = [CheckpointModel(path, device) for path in checkpoints or []]
    loaded += [ExportedModel(path) for path in exported or []]
    if not loaded:
        raise ValueError("serve needs at least one --checkpoint FILE or --exported FILE")
    for model in loaded:
        name, n = model.name, 1
        while name in models:
            n += 1
            name = f"{model.name}-{n}"
        model.name = name
        models[name] = model
    return models
