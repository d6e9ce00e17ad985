"""Anomalous regions of one image: connected components of its thresholded map, or a detector's boxes.

Boxes are in the image's own pixels (``x0, y0`` inclusive, ``x1, y1`` exclusive), with area
and peak score in raw units; at most :data:`MAX_REGIONS` per image, highest peak first.
"""

from __future__ import annotations

import numpy as np
import torch

#: At most this many regions are reported per image (the highest peaks first).
MAX_REGIONS = 100


# -- regions ----------------------------------------------------------------------------------------
def find_regions(full_map: np.ndarray, threshold: float, limit: int = MAX_REGIONS) -> list[dict]:
    """Connected components (8-connected) of ``full_map >= threshold``: box, area, peak (raw units).

    Boxes are ``x0, y0`` inclusive and ``x1, y1`` exclusive, in the image's own pixels. The
    ``limit`` regions with the highest peaks are kept, highest first.
    """
    from scipy import ndimage

    values = np.asarray(full_map, dtype=np.float64)
    mask = values >= threshold
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    peaks = ndimage.maximum(values, labels, index)
    areas = ndimage.sum_labels(np.ones_like(values), labels, index)
    regions = []
    for k, box in enumerate(ndimage.find_objects(labels)):
        rows, cols = box
        regions.append(
            {
                "x0": int(cols.start),
                "y0": int(rows.start),
                "x1": int(cols.stop),
                "y1": int(rows.stop),
                "area": int(areas[k]),
                "peak_score": float(peaks[k]),
                "source": "mask",
            }
        )
    regions.sort(key=lambda r: -r["peak_score"])
    return regions[:limit]


def detector_regions(regions: torch.Tensor | None, limit: int = MAX_REGIONS) -> list[dict]:
    """A detector's own ``(K, 5)`` boxes (already in the image's pixels) as region dicts."""
    if regions is None:
        return []
    out = []
    for x0, y0, x1, y1, score in regions.tolist():
        out.append(
            {
                "x0": round(x0, 2),
                "y0": round(y0, 2),
                "x1": round(x1, 2),
                "y1": round(y1, 2),
                "area": round(max(x1 - x0, 0.0) * max(y1 - y0, 0.0), 2),
                "peak_score": float(score),
                "source": "detector",
            }
        )
    out.sort(key=lambda r: -r["peak_score"])
    return out[:limit]


def scale_regions(regions: torch.Tensor, input_size: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``(K, 5)`` boxes in input pixels ``(h, w)`` -> the image's own pixels (``size`` = width, height)."""
    out = regions.float().clone().reshape(-1, 5)
    out[:, [0, 2]] *= size[0] / input_size[1]
    out[:, [1, 3]] *= size[1] / input_size[0]
    return out
