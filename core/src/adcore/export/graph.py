"""The module that export traces: normalisation, the detector's ``forward``, calibrated 0..1 outputs."""

from __future__ import annotations

import math

import torch
from torch import nn

from adcore.detector import AnomalyDetector


def _split(value: float) -> tuple[float, float]:
    """``value`` as float32 high + low parts, so ``(x - high) - low`` keeps a float64 threshold's digits."""
    high = float(torch.tensor(value, dtype=torch.float32))
    return high, float(torch.tensor(value - high, dtype=torch.float32))


class _Normalizer(nn.Module):
    """``PostProcessor._normalize`` in float32: ``clip((x - threshold) / span + 0.5, 0, 1)``."""

    def __init__(self, threshold: float, low: float, high: float) -> None:
        super().__init__()
        span = high - low
        span = 1.0 if math.isnan(span) else max(span, 1e-12)  # as PostProcessor: a manual threshold alone
        threshold_high, threshold_low = _split(threshold)
        self.register_buffer("threshold_high", torch.tensor(threshold_high, dtype=torch.float32))
        self.register_buffer("threshold_low", torch.tensor(threshold_low, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(1.0 / span, dtype=torch.float32))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        centred = (values - self.threshold_high) - self.threshold_low
        return (centred * self.scale + 0.5).clamp(0.0, 1.0)


def _threshold(value: torch.Tensor) -> float | None:
    number = float(value)
    return None if math.isnan(number) else number


class ExportGraph(nn.Module):
    """RGB 0..1 at the input size -> (pred_score, normalized_score, anomaly_map, normalized_map).

    Outputs the detector cannot give are left out: ``output_names`` (set by :meth:`probe`)
    lists those the traced graph returns, in order.
    """

    def __init__(self, detector: AnomalyDetector) -> None:
        super().__init__()
        self.detector = detector.eval()
        spec = detector.input_spec
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1))
        post = detector.post_processor
        image_threshold = _threshold(post.image_threshold)
        pixel_threshold = _threshold(post.pixel_threshold)
        self.image_norm = (
            None
            if image_threshold is None
            else _Normalizer(image_threshold, float(post.image_min), float(post.image_max))
        )
        self.pixel_norm = (
            None
            if pixel_threshold is None
            else _Normalizer(pixel_threshold, float(post.pixel_min), float(post.pixel_max))
        )
        self.has_map = True
        self.output_names: list[str] = []

    def probe(self, example: torch.Tensor) -> list[str]:
        """Run once to learn which outputs exist (a detector may return no map)."""
        with torch.no_grad():
            output = self.detector(self.normalize(example))
        self.has_map = output.anomaly_map is not None
        names = ["pred_score"]
        if self.image_norm is not None:
            names.append("normalized_score")
        if self.has_map:
            names.append("anomaly_map")
            if self.pixel_norm is not None:
                names.append("normalized_map")
        self.output_names = names
        return names

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean) / self.std

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.detector(self.normalize(image))
        score = output.pred_score.float().reshape(-1)
        outputs = [score]
        if self.image_norm is not None:
            outputs.append(self.image_norm(score))
        if self.has_map:
            anomaly_map = output.anomaly_map.float()
            outputs.append(anomaly_map)
            if self.pixel_norm is not None:
                outputs.append(self.pixel_norm(anomaly_map))
        return tuple(outputs)
