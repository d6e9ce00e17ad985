"""One image's answer at its own resolution: score, verdict, map, mask and regions.

What :meth:`adcore.AnomalyDetector.predict_image` and ``adcore serve`` return: the detector's
thresholds and normalisation applied to one :class:`adcore.tiling.ScoredImage`.
"""

from __future__ import annotations

import attrs
import numpy as np
import torch

from adcore.regions import detector_regions, find_regions
from adcore.tiling import ScoredImage


# -- one image's answer ----------------------------------------------------------------------------
@attrs.define
class ImagePrediction:
    """What :meth:`AnomalyDetector.predict_image` returns, at the image's own resolution.

    ``score`` is raw; ``normalized_score`` is 0..1 with the image threshold at 0.5 and
    ``is_anomalous`` the verdict (both None without an image threshold). ``anomaly_map`` is
    the raw map (H, W) float32; ``mask`` is ``anomaly_map >= pixel threshold`` (None without
    a map or a pixel threshold); ``regions`` are its connected components, or the detector's
    own regions when it scores regions.
    """

    score: float
    normalized_score: float | None
    is_anomalous: bool | None
    anomaly_map: np.ndarray | None
    normalized_map: np.ndarray | None
    mask: np.ndarray | None
    regions: list[dict]
    width: int
    height: int
    tiles: int = 1

    def to_json(self, include_map: bool = False) -> dict:
        """The fields as plain JSON (map summary always; the full map only when asked)."""
        out: dict = {
            "score": self.score,
            "normalized_score": self.normalized_score,
            "is_anomalous": self.is_anomalous,
            "width": self.width,
            "height": self.height,
            "tiles": self.tiles,
            "regions": self.regions,
        }
        if self.anomaly_map is not None:
            out["map"] = {
                "min": float(self.anomaly_map.min()),
                "max": float(self.anomaly_map.max()),
                "mean": float(self.anomaly_map.mean()),
                "anomalous_fraction": None if self.mask is None else float(self.mask.mean()),
            }
            if include_map:
                out["map"]["values"] = self.anomaly_map.tolist()
        return out


def image_prediction(detector, scored: ScoredImage) -> ImagePrediction:
    """Thresholds and normalisation of the detector applied to one scored image."""
    post = detector.post_processor
    calibrated = post.is_calibrated
    normalized = float(post.normalize_scores(torch.tensor([scored.score]))[0]) if calibrated else None
    verdict = bool(scored.score >= float(post.image_threshold)) if calibrated else None
    full = None if scored.full_map is None else scored.full_map.numpy().astype(np.float32, copy=False)
    has_pixel = full is not None and not bool(torch.isnan(post.pixel_threshold))
    normalized_map = post.normalize_maps(torch.from_numpy(full)).numpy() if has_pixel else None
    mask = full.astype(np.float64) >= float(post.pixel_threshold) if has_pixel else None
    if scored.regions is not None:
        regions = detector_regions(scored.regions)
    elif mask is not None:
        regions = find_regions(full, float(post.pixel_threshold))
    else:
        regions = []
    return ImagePrediction(
        score=scored.score,
        normalized_score=normalized,
        is_anomalous=verdict,
        anomaly_map=full,
        normalized_map=normalized_map,
        mask=mask,
        regions=regions,
        width=scored.size[0],
        height=scored.size[1],
        tiles=scored.tiles,
    )
