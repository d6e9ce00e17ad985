"""A loaded export: preprocessing from its metadata, the graph, and the decisions."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adcore_runtime.backends import ExportFileError, open_backend
from adcore_runtime.images import ImageInput, as_rgb_image, preprocess

SUPPORTED_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Prediction:
    """One image's result. Maps are (H, W) at the model's input size.

    ``normalized_score`` and ``normalized_map`` are in 0..1 with the threshold at 0.5;
    ``is_anomalous`` is ``score >= image_threshold``; ``mask`` is ``anomaly_map >= pixel_threshold``.
    Each is None when the export has no calibration (or the detector no map).
    """

    score: float
    normalized_score: float | None
    is_anomalous: bool | None
    anomaly_map: np.ndarray | None
    normalized_map: np.ndarray | None
    mask: np.ndarray | None
    path: str | None = None
    original_size: tuple[int, int] | None = None  # (height, width) of the image before resizing


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


class Model:
    """An exported adcore model. ``Model("model.onnx").predict("image.png")``.

    ``backend``: "onnxruntime" (.onnx), "openvino" (.xml) or "torchscript" (.pt); chosen by
    the file's suffix when omitted. Other keyword options go to the backend (``threads``;
    for OpenVINO also ``device``, ``precision``, ``hint``).
    """

    def __init__(self, path: str | os.PathLike, backend: str | None = None, **options: Any) -> None:
        self.path = Path(path)
        self.backend = open_backend(self.path, backend, **options)
        self.metadata: dict[str, Any] = self.backend.metadata
        version = self.metadata.get("format_version", 0)
        if not isinstance(version, int) or version > SUPPORTED_FORMAT_VERSION:
            raise ExportFileError(f"{self.path}: export format {version!r} is newer than this runtime; upgrade it")
        spec = self.metadata["input"]
        self.image_size: tuple[int, int] = (int(spec["image_size"][0]), int(spec["image_size"][1]))
        self.dynamic_batch = spec.get("batch") == "dynamic"
        post = self.metadata.get("post_processing") or {}
        self.image_threshold = _number(post.get("image_threshold"))
        self.pixel_threshold = _number(post.get("pixel_threshold"))

    @property
    def detector(self) -> str:
        return str(self.metadata.get("detector"))

    def __repr__(self) -> str:
        height, width = self.image_size
        return f"Model({str(self.path)!r}, detector={self.detector!r}, input={height}x{width}, backend={self.backend.name})"

    # -- the graph ---------------------------------------------------------------------------
    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The raw graph: float32 (N, 3, H, W) RGB in 0..1 at the input size -> its named outputs."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        height, width = self.image_size
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1:] != (3, height, width):
            raise ValueError(f"model input must be (N, 3, {height}, {width}) float32, got {images.shape}")
        if self.dynamic_batch or images.shape[0] == 1:
            return self.backend(images)
        parts = [self.backend(images[i : i + 1]) for i in range(images.shape[0])]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def preprocess(self, image: ImageInput) -> np.ndarray:
        """A path, PIL image or uint8 array -> float32 (3, H, W) in 0..1, as adcore's dataset makes it."""
        rgb, _ = as_rgb_image(image)
        return preprocess(rgb, self.image_size)

    # -- predictions -------------------------------------------------------------------------
    def predict(self, image: ImageInput) -> Prediction:
        """Score one image (a path, a PIL image or a uint8 (H, W, 3) array)."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Iterable[ImageInput], batch_size: int = 16) -> list[Prediction]:
        """Score many images, ``batch_size`` at a time."""
        items = list(images)
        results: list[Prediction] = []
        for start in range(0, len(items), batch_size):
            chunk = [as_rgb_image(item) for item in items[start : start + batch_size]]
            batch = np.stack([preprocess(rgb, self.image_size) for rgb, _ in chunk])
            outputs = self.run(batch)
            sizes = [(rgb.size[1], rgb.size[0]) for rgb, _ in chunk]
            results += self._predictions(outputs, [path for _, path in chunk], sizes)
        return results

    def _predictions(
        self, outputs: dict[str, np.ndarray], paths: Sequence[str | None], sizes: Sequence[tuple[int, int]]
    ) -> list[Prediction]:
        scores = outputs["pred_score"].reshape(-1)
        normalized = outputs.get("normalized_score")
        maps = outputs.get("anomaly_map")
        normalized_maps = outputs.get("normalized_map")
        predictions = []
        for i, path in enumerate(paths):
            score = float(scores[i])
            anomaly_map = None if maps is None else maps[i].reshape(self.image_size)
            predictions.append(
                Prediction(
                    score=score,
                    normalized_score=None if normalized is None else float(normalized.reshape(-1)[i]),
                    # float64 comparison, as adcore's predictions table
                    is_anomalous=None if self.image_threshold is None else score >= self.image_threshold,
                    anomaly_map=anomaly_map,
                    normalized_map=None if normalized_maps is None else normalized_maps[i].reshape(self.image_size),
                    mask=None
                    if anomaly_map is None or self.pixel_threshold is None
                    else anomaly_map.astype(np.float64) >= self.pixel_threshold,
                    path=path,
                    original_size=sizes[i],
                )
            )
        return predictions


def load(path: str | os.PathLike, backend: str | None = None, **options: Any) -> Model:
    """Open an exported model (``.onnx``, OpenVINO ``.xml``, TorchScript ``.pt``)."""
    return Model(path, backend, **options)
