"""Evaluation metrics: image AUROC, pixel AUROC, AUPRO and F1-max.

Image AUROC and precision-recall come from torchmetrics. The pixel metrics share one sort
of all pixel scores (:func:`pixel_metrics`): it gives, for every threshold at once, the
true- and false-positive counts (ROC AUC, F1-max) and the mean per-region overlap over
connected ground-truth regions (AUPRO, Bergmann et al. 2020, integrated up to ``fpr_limit``
and divided by it so a perfect detector scores 1). All are exact, with ties handled as
thresholds between distinct scores; one sort instead of five keeps ``test`` fast.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import torch
from torchmetrics.functional.classification import binary_auroc, binary_precision_recall_curve


def _unit_range(scores: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Min-max scale to [0, 1] in float64 (order-preserving).

    torchmetrics treats predictions outside [0, 1] as logits and applies a sigmoid, which
    would squash large raw anomaly scores into ties; scaling first avoids that.
    """
    scores = scores.detach().double().flatten()
    low, high = float(scores.min()), float(scores.max())
    span = high - low if high > low else 1.0
    return (scores - low) / span, low, span


def _check_binary(target: torch.Tensor, what: str) -> None:
    """O(N): no sort of millions of pixels just to find the values (they are listed on failure only)."""
    if ((target != 0) & (target != 1)).any():
        raise ValueError(f"{what} must be 0/1, found values {torch.unique(target)[:5].tolist()}")


def image_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of image scores; NaN when only one class is present."""
    labels = labels.long().flatten()
    _check_binary(labels, "labels")
    if labels.min() == labels.max():
        return float("nan")
    return float(binary_auroc(_unit_range(scores)[0], labels))


def pixel_auroc(maps: torch.Tensor, masks: torch.Tensor) -> float:
    """ROC AUC over every pixel of every image."""
    return image_auroc(maps.flatten(), masks.flatten().long())


def f1_max(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Best F1 over all thresholds, and the threshold that reaches it."""
    labels = labels.long().flatten()
    _check_binary(labels, "labels")
    unit, low, span = _unit_range(scores)
    precision, recall, thresholds = binary_precision_recall_curve(unit, labels)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    best = int(torch.argmax(f1[:-1])) if thresholds.numel() else 0
    threshold = float(thresholds[best]) * span + low if thresholds.numel() else float("nan")
    return float(f1[best]), threshold


def connected_regions(masks: torch.Tensor) -> np.ndarray:
    """Label 8-connected regions of each (N, 1, H, W) mask; ids are unique across images."""
    masks_np = masks.reshape(masks.shape[0], *masks.shape[-2:]).cpu().numpy() > 0.5
    regions = np.zeros(masks_np.shape, dtype=np.int64)
    offset = 0
    for i, mask in enumerate(masks_np):
        labelled, count = scipy.ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        regions[i] = np.where(labelled > 0, labelled + offset, 0)
        offset += count
    return regions


def aupro(maps: torch.Tensor, masks: torch.Tensor, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (NaN without regions)."""
    return pixel_metrics(maps, masks, fpr_limit).get("pixel_aupro", float("nan"))


def pixel_metrics(maps: torch.Tensor, masks: torch.Tensor, fpr_limit: float = 0.3) -> dict[str, float]:
    """Pixel AUROC, AUPRO and F1-max from one descending sort of every pixel score."""
    _check_binary(masks, "masks")
    # Sorted in the maps' own precision (float32): widening adds no ties and doubles the sort's cost.
    scores = maps.detach().flatten().cpu()
    scores = scores if scores.dtype in (torch.float32, torch.float64) else scores.float()
    positive = masks.flatten().cpu() > 0.5
    n_positive, n_negative = int(positive.sum()), int((~positive).sum())
    if n_positive == 0 or n_negative == 0:
        return {}
    order = torch.argsort(scores, descending=True)
    sorted_scores = scores[order]
    # Thresholds sit between distinct scores: keep the last index of each run of ties.
    last_of_run = torch.ones_like(sorted_scores, dtype=torch.bool)
    last_of_run[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    sorted_positive = positive[order]
    true_positives = torch.cumsum(sorted_positive, 0, dtype=torch.float64)[last_of_run]
    false_positives = torch.cumsum(~sorted_positive, 0, dtype=torch.float64)[last_of_run]

    zero = torch.zeros(1, dtype=torch.float64)
    tpr = torch.cat([zero, true_positives / n_positive])
    fpr = torch.cat([zero, false_positives / n_negative])
    results = {"pixel_auroc": float(torch.trapezoid(tpr, fpr))}

    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / n_positive
    results["pixel_f1_max"] = float((2 * precision * recall / (precision + recall).clamp_min(1e-12)).max())

    regions = torch.from_numpy(connected_regions(masks)).flatten()
    n_regions = int(regions.max())
    region_sizes = torch.bincount(regions, minlength=n_regions + 1).double()
    # Each anomalous pixel adds 1 / (R * |its region|) to the mean overlap once detected.
    weight = torch.where(regions == 0, torch.zeros((), dtype=torch.float64), 1.0 / (n_regions * region_sizes[regions]))
    pro = torch.cat([zero, torch.cumsum(weight[order], 0)[last_of_run]])
    results["pixel_aupro"] = _area_up_to(fpr, pro, fpr_limit)
    return results


def _area_up_to(fpr: torch.Tensor, pro: torch.Tensor, fpr_limit: float) -> float:
    """Area under ``pro`` over ``fpr`` in [0, fpr_limit] (interpolated at the cut), over fpr_limit."""
    cut = int(torch.searchsorted(fpr, torch.tensor([fpr_limit], dtype=torch.float64), right=True))
    fpr_kept, pro_kept = fpr[:cut], pro[:cut]
    if cut < fpr.numel():
        f0, f1_, p0, p1 = fpr[cut - 1], fpr[cut], pro[cut - 1], pro[cut]
        pro_at_limit = p0 + (p1 - p0) * (fpr_limit - f0) / (f1_ - f0)
        fpr_kept = torch.cat([fpr_kept, torch.tensor([fpr_limit], dtype=torch.float64)])
        pro_kept = torch.cat([pro_kept, pro_at_limit.reshape(1)])
    return float(torch.trapezoid(pro_kept, fpr_kept) / fpr_limit)


def compute_metrics(
    scores: torch.Tensor,
    labels: torch.Tensor | None,
    maps: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
) -> dict[str, float]:
    """Every metric the ground truth allows: image metrics need labels, pixel ones masks."""
    results: dict[str, float] = {}
    if labels is not None and labels.min() != labels.max():
        results["image_auroc"] = image_auroc(scores, labels)
        results["image_f1_max"] = f1_max(scores, labels)[0]
    if maps is not None and masks is not None and masks.max() > 0:
        pixel = pixel_metrics(maps, masks)
        results.update({key: pixel[key] for key in ("pixel_auroc", "pixel_aupro", "pixel_f1_max") if key in pixel})
    return results
