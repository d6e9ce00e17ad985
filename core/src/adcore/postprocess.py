"""Thresholds and score normalisation, learned on validation data.

* Threshold: F1-optimal when the validation data has anomalies; otherwise a high
  quantile of the normal scores (``normal_quantile``), so an all-normal validation set
  yields a usable threshold rather than the minimum score (which flags everything).
* A manual threshold (raw score units) replaces the learned one and really applies: it
  decides which images are anomalous (``is_anomalous`` in the CLI's tables) and centres
  the normalisation.
* Normalisation maps raw scores to 0..1 with the threshold at exactly 0.5, using the
  min/max seen on validation: ``(x - threshold) / (max - min) + 0.5``, clipped.

All state lives in buffers so it travels inside the safetensors checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from adcore.metrics import f1_max, f1_threshold, pixel_histograms, score_range
from adcore.prediction_store import is_stored

DEFAULT_NORMAL_QUANTILE = 0.99
_PIXEL_SAMPLE = 2_000_000  # pixels used for the pixel threshold search


def _subsample(*flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same seeded random subset of at most ``_PIXEL_SAMPLE`` entries of each 1-D tensor."""
    if flat[0].numel() <= _PIXEL_SAMPLE:
        return flat
    keep = torch.randperm(flat[0].numel(), generator=torch.Generator().manual_seed(0))[:_PIXEL_SAMPLE]
    return tuple(t[keep] for t in flat)


def _quantile(values: torch.Tensor, q: float) -> float:
    (values,) = _subsample(values.flatten().float())
    return float(torch.quantile(values, q))


def learn_threshold(scores: torch.Tensor, labels: torch.Tensor | None, normal_quantile: float) -> tuple[float, str]:
    """The threshold and how it was chosen ("f1" or "quantile")."""
    if labels is not None and labels.max() > 0 and labels.min() == 0:
        return f1_max(scores, labels)[1], "f1"
    normal = scores if labels is None else scores[labels.flatten() == 0]
    if normal.numel() == 0:
        raise ValueError("cannot choose a threshold: validation data has no normal samples")
    return _quantile(normal, normal_quantile), "quantile"


class PostProcessor(nn.Module):
    """Image and pixel thresholds plus the min/max used to normalise to 0..1."""

    def __init__(self) -> None:
        super().__init__()
        for name in ("image_threshold", "pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max"):
            self.register_buffer(name, torch.tensor(float("nan"), dtype=torch.float64))

    @property
    def is_calibrated(self) -> bool:
        return not bool(torch.isnan(self.image_threshold))

    def calibrate(
        self,
        scores: torch.Tensor,
        labels: torch.Tensor | None,
        maps: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        normal_quantile: float = DEFAULT_NORMAL_QUANTILE,
    ) -> dict[str, object]:
        """Learn thresholds and min/max from validation predictions; returns a summary."""
        image_threshold, image_rule = learn_threshold(scores, labels, normal_quantile)
        self.image_threshold.fill_(image_threshold)
        self.image_min.fill_(float(scores.min()))
        self.image_max.fill_(float(scores.max()))
        summary: dict[str, object] = {"image_threshold": image_threshold, "image_threshold_rule": image_rule}
        if maps is not None and (is_stored(maps) or is_stored(masks)):
            summary.update(self._calibrate_pixels_binned(maps, masks, labels, normal_quantile))
        elif maps is not None:
            if masks is not None and masks.max() > 0:
                flat_maps, flat_masks = _subsample(maps.flatten(), masks.flatten().long())
                pixel_threshold, pixel_rule = f1_max(flat_maps, flat_masks)[1], "f1"
            else:
                normal_maps = maps if labels is None else maps[labels.flatten() == 0]
                pixel_threshold, pixel_rule = _quantile(normal_maps, normal_quantile), "quantile"
            self.pixel_threshold.fill_(pixel_threshold)
            self.pixel_min.fill_(float(maps.min()))
            self.pixel_max.fill_(float(maps.max()))
            summary.update(pixel_threshold=pixel_threshold, pixel_threshold_rule=pixel_rule)
        return summary

    def _calibrate_pixels_binned(self, maps, masks, labels: torch.Tensor | None, normal_quantile: float) -> dict:
        """Pixel threshold and min/max from histograms over chunks (maps spilled to disk).

        F1 rule: the bin edge with the best F1 (the in-memory rule searches a 2M-pixel sample
        instead). Quantile rule: the histogram's quantile, off by at most
        ``pixel_threshold_error_bound`` (about one bin width of 2**20 over the score range).
        """
        low, high = score_range(maps)
        histograms = pixel_histograms(maps, masks, value_range=(low, high)) if masks is not None else None
        summary: dict[str, object] = {"pixel_threshold_binned": True}
        if histograms is not None and histograms.positive.sum() > 0:
            pixel_threshold, pixel_rule = f1_threshold(histograms), "f1"
        else:
            select = None if labels is None else labels.flatten() == 0
            if histograms is None or select is not None:
                histograms = pixel_histograms(maps, None, select=select, value_range=(low, high))
            pixel_threshold, error = histograms.quantile(normal_quantile)
            pixel_rule = "quantile"
            summary["pixel_threshold_error_bound"] = error
        self.pixel_threshold.fill_(pixel_threshold)
        self.pixel_min.fill_(low)
        self.pixel_max.fill_(high)
        summary.update(pixel_threshold=pixel_threshold, pixel_threshold_rule=pixel_rule)
        return summary

    def set_manual_threshold(self, image: float | None = None, pixel: float | None = None) -> None:
        """Override learned thresholds (raw score units)."""
        if image is not None:
            self.image_threshold.fill_(float(image))
        if pixel is not None:
            self.pixel_threshold.fill_(float(pixel))

    @staticmethod
    def _normalize(
        values: torch.Tensor, threshold: torch.Tensor, low: torch.Tensor, high: torch.Tensor
    ) -> torch.Tensor:
        # A manual threshold without calibration has no min/max: use a unit span so the
        # threshold still maps to 0.5 (NaN would make every normalised score NaN).
        span = torch.nan_to_num(high - low, nan=1.0).clamp_min(1e-12)
        return ((values.double() - threshold) / span + 0.5).clamp(0.0, 1.0).float()

    def normalize_scores(self, scores: torch.Tensor) -> torch.Tensor:
        self._require(self.image_threshold, "image")
        return self._normalize(scores, self.image_threshold, self.image_min, self.image_max)

    def normalize_maps(self, maps: torch.Tensor) -> torch.Tensor:
        self._require(self.pixel_threshold, "pixel")
        if is_stored(maps):  # whole spilled maps (callers that loop over images pass one at a time)
            maps = maps.to_tensor()
        return self._normalize(maps, self.pixel_threshold, self.pixel_min, self.pixel_max)

    def summary(self) -> dict[str, float | None]:
        def value(t: torch.Tensor) -> float | None:
            return None if torch.isnan(t) else float(t)

        return {name: value(buf) for name, buf in self.named_buffers()}

    @staticmethod
    def _require(threshold: torch.Tensor, what: str) -> None:
        if torch.isnan(threshold):
            raise RuntimeError(f"no {what} threshold: calibrate on validation data or set one manually")
