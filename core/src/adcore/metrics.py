"""Evaluation metrics: image AUROC, pixel AUROC, AUPRO and F1-max.

Every exact metric comes from one descending sort of the scores (:func:`_ranked_counts`): it
gives, for every threshold at once, the true- and false-positive counts (ROC AUC, F1-max)
and, for pixels, the mean per-region overlap over connected ground-truth regions (AUPRO,
Bergmann et al. 2020, integrated up to ``fpr_limit`` and divided by it so a perfect detector
scores 1). All are exact, with ties handled as thresholds between distinct scores (the
construction of scikit-learn's and torchmetrics' binary curves, whose numbers they match);
written here because importing torchmetrics costs a run more than a second.

Maps too large for memory (spilled to disk by :mod:`adcore.prediction_store`) are scored by
:func:`binned_pixel_metrics` instead: two passes over chunks of images (score range, then
histograms of normal pixels, anomalous pixels and per-region overlap), memory flat in the
number of images, each metric with a rigorous bound on its distance to the exact value.
"""

from __future__ import annotations

import math

import attrs
import numpy as np
import scipy.ndimage
import torch

from adcore.prediction_store import DEFAULT_CHUNK_IMAGES, StoredArray, chunks, is_stored


def _check_binary(target: torch.Tensor, what: str) -> None:
    """O(N): no sort of millions of pixels just to find the values (they are listed on failure only)."""
    if ((target != 0) & (target != 1)).any():
        raise ValueError(f"{what} must be 0/1, found values {torch.unique(target)[:5].tolist()}")


@attrs.frozen
class _RankedCounts:
    """Counts at every distinct score taken as a threshold, highest threshold first."""

    order: torch.Tensor  # the descending sort of the scores
    last_of_run: torch.Tensor  # (N,) bool: the last index of each run of tied scores
    thresholds: torch.Tensor  # the distinct scores, descending
    true_positives: torch.Tensor  # float64, at each threshold (scores >= threshold)
    false_positives: torch.Tensor

    def roc_area(self) -> float:
        zero = torch.zeros(1, dtype=torch.float64)
        tpr = torch.cat([zero, self.true_positives / self.true_positives[-1]])
        fpr = torch.cat([zero, self.false_positives / self.false_positives[-1]])
        return float(torch.trapezoid(tpr, fpr))

    def f1(self) -> torch.Tensor:
        precision = self.true_positives / (self.true_positives + self.false_positives)
        recall = self.true_positives / self.true_positives[-1]
        return 2 * precision * recall / (precision + recall).clamp_min(1e-12)


def _ranked_counts(scores: torch.Tensor, positive: torch.Tensor) -> _RankedCounts:
    """One descending sort of ``scores`` (in their own precision: widening adds no ties and
    doubles the sort's cost) and the cumulative counts of ``positive`` (bool) along it."""
    order = torch.argsort(scores, descending=True)
    sorted_scores = scores[order]
    last_of_run = torch.ones_like(sorted_scores, dtype=torch.bool)
    last_of_run[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    sorted_positive = positive[order]
    return _RankedCounts(
        order=order,
        last_of_run=last_of_run,
        thresholds=sorted_scores[last_of_run],
        true_positives=torch.cumsum(sorted_positive, 0, dtype=torch.float64)[last_of_run],
        false_positives=torch.cumsum(~sorted_positive, 0, dtype=torch.float64)[last_of_run],
    )


def _flat_scores(scores: torch.Tensor) -> torch.Tensor:
    """Scores as one CPU vector in their own float precision (float32 maps are sorted as float32)."""
    scores = scores.detach().flatten().cpu()
    return scores if scores.dtype in (torch.float32, torch.float64) else scores.float()


def _scores_and_labels(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    labels = labels.long().flatten()
    _check_binary(labels, "labels")
    return _flat_scores(scores), labels.cpu() == 1


def image_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of image scores; NaN when only one class is present."""
    scores, positive = _scores_and_labels(scores, labels)
    if bool(positive.all()) or not bool(positive.any()):
        return float("nan")
    return _ranked_counts(scores, positive).roc_area()


def pixel_auroc(maps: torch.Tensor, masks: torch.Tensor) -> float:
    """ROC AUC over every pixel of every image."""
    return image_auroc(maps.flatten(), masks.flatten().long())


def f1_max(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Best F1 over all thresholds, and the threshold that reaches it (NaN, NaN without positives)."""
    scores, positive = _scores_and_labels(scores, labels)
    if not bool(positive.any()):
        return float("nan"), float("nan")
    counts = _ranked_counts(scores, positive)
    f1 = counts.f1()
    best = int(torch.argmax(f1))
    return float(f1[best]), float(counts.thresholds[best])


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
    scores = _flat_scores(maps)
    positive = masks.flatten().cpu() > 0.5
    n_positive, n_negative = int(positive.sum()), int((~positive).sum())
    if n_positive == 0 or n_negative == 0:
        return {}
    counts = _ranked_counts(scores, positive)
    order, last_of_run = counts.order, counts.last_of_run
    results = {"pixel_auroc": counts.roc_area(), "pixel_f1_max": float(counts.f1().max())}
    zero = torch.zeros(1, dtype=torch.float64)
    fpr = torch.cat([zero, counts.false_positives / n_negative])

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


#: Pixels above which ``compute_metrics`` bins instead of sorting: on MVTec bottle's 5.4 M
#: test pixels (PaDiM) the exact sort took 2.07 s here, the binned metrics 0.33 s, with
#: differences below 1.2e-6 and bounds (reported as ``*_error_bound``) below 1e-5.
EXACT_PIXEL_LIMIT = 1 << 22


def compute_metrics(
    scores: torch.Tensor,
    labels: torch.Tensor | None,
    maps: torch.Tensor | StoredArray | None = None,
    masks: torch.Tensor | StoredArray | None = None,
    *,
    binned: bool | None = None,
) -> dict[str, float]:
    """Every metric the ground truth allows: image metrics need labels, pixel ones masks.

    Pixel metrics are exact (:func:`pixel_metrics`) up to ``EXACT_PIXEL_LIMIT`` pixels in
    memory, and binned over chunks (:func:`binned_pixel_metrics`, with error bounds reported
    beside them) beyond it or for maps on disk; ``binned`` forces either.
    """
    results: dict[str, float] = {}
    if labels is not None and labels.min() != labels.max():
        results["image_auroc"] = image_auroc(scores, labels)
        results["image_f1_max"] = f1_max(scores, labels)[0]
    if maps is None or masks is None:
        return results
    if binned is None:
        binned = is_stored(maps) or is_stored(masks) or maps.shape[0] * math.prod(maps.shape[1:]) > EXACT_PIXEL_LIMIT
    if binned:
        results.update(binned_pixel_metrics(maps, masks))
    elif masks.max() > 0:
        pixel = pixel_metrics(maps, masks)
        results.update({key: pixel[key] for key in ("pixel_auroc", "pixel_aupro", "pixel_f1_max") if key in pixel})
    return results


# -- binned pixel metrics (maps that do not fit in memory) --------------------------------------
#: Linear bins between the smallest and largest pixel score. 2**20 bins keep the bounds below
#: 1e-4 on real maps, and the three histograms take 24 MB whatever the number of images.
DEFAULT_BINS = 1 << 20


@attrs.define
class PixelHistograms:
    """Counts of pixel scores in ``bins`` equal bins over [low, high], from chunks of maps.

    ``negative``/``positive``: normal and anomalous pixels per bin; ``overlap``: per bin, the sum
    over anomalous pixels of 1 / |their connected region| (AUPRO's per-region overlap, before
    dividing by ``regions``, the number of regions).
    """

    low: float
    high: float
    bins: int
    negative: np.ndarray
    positive: np.ndarray
    overlap: np.ndarray
    regions: int

    @property
    def width(self) -> float:
        """One bin's width in score units (0 when every score is equal)."""
        return (self.high - self.low) / self.bins

    def edge(self, index: int) -> float:
        """The lower edge of bin ``index``: the threshold whose positives are bins >= index."""
        return self.low + index * self.width

    def quantile(self, q: float, counts: np.ndarray | None = None) -> tuple[float, float]:
        """The ``q`` quantile of ``counts`` (default ``negative``) as ``torch.quantile`` defines it
        (linear between the order statistics around ``q * (n - 1)``), and the largest possible
        error: the exact value lies between the lower edge of the bin of the lower order statistic
        and the upper edge of the bin of the upper one (one bin width when they share a bin)."""
        counts = self.negative if counts is None else counts
        total = int(counts.sum())
        if total == 0:
            raise ValueError("no pixels to take a quantile of")
        cumulative = np.cumsum(counts)
        rank = q * (total - 1)
        lower, upper = math.floor(rank), math.ceil(rank)
        i1 = int(np.searchsorted(cumulative, lower, side="right"))
        i2 = int(np.searchsorted(cumulative, upper, side="right"))
        if i1 == i2:
            before = int(cumulative[i1 - 1]) if i1 > 0 else 0
            inside = (rank - before + 0.5) / int(counts[i1])
            estimate = self.edge(i1) + min(max(inside, 0.0), 1.0) * self.width
        else:
            frac = rank - lower
            estimate = (1 - frac) * (self.edge(i1) + 0.5 * self.width) + frac * (self.edge(i2) + 0.5 * self.width)
        error = max(estimate - self.edge(i1), self.edge(i2 + 1) - estimate)
        return estimate, error


def _bin_index(values: np.ndarray, low: float, scale: float, bins: int) -> np.ndarray:
    """Monotone bin numbers: every float operation here rounds monotonically, so a larger score
    never lands in a lower bin and only pairs within one bin have an unknown order."""
    index = values.astype(np.float64)  # in place from here: one float64 and one int64 copy of the chunk
    index -= low
    index *= scale
    np.floor(index, out=index)
    np.clip(index, 0, bins - 1, out=index)
    return index.astype(np.int64)


def _numpy(values) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def score_range(maps, chunk_size: int = DEFAULT_CHUNK_IMAGES) -> tuple[float, float]:
    """Smallest and largest pixel score, one chunk at a time (refuses NaN or infinite scores)."""
    low, high = math.inf, -math.inf
    for _, chunk in chunks(maps, chunk_size):
        values = _numpy(chunk)
        if values.size == 0:
            continue
        if not np.isfinite(values).all():
            raise ValueError("anomaly maps hold NaN or infinite scores")
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    return low, high


def pixel_histograms(
    maps,
    masks=None,
    bins: int = DEFAULT_BINS,
    chunk_size: int = DEFAULT_CHUNK_IMAGES,
    select: torch.Tensor | None = None,
    value_range: tuple[float, float] | None = None,
) -> PixelHistograms:
    """Two passes over chunks of images: the score range, then the histograms.

    ``masks`` None counts every pixel as normal; ``select`` (a bool per image) keeps only some
    images. Regions are found per image (8-connected, as :func:`connected_regions`).
    """
    low, high = value_range if value_range is not None else score_range(maps, chunk_size)
    if not math.isfinite(low):
        raise ValueError("no pixel scores")
    scale = bins / (high - low) if high > low else 0.0
    negative = np.zeros(bins, dtype=np.int64)
    positive = np.zeros(bins, dtype=np.int64)
    overlap = np.zeros(bins, dtype=np.float64)
    regions = 0
    keep = None if select is None else _numpy(select).astype(bool).reshape(-1)
    mask_chunks = chunks(masks, chunk_size) if masks is not None else None
    for start, chunk in chunks(maps, chunk_size):
        mask_chunk = next(mask_chunks)[1] if mask_chunks is not None else None
        values = _numpy(chunk).reshape(chunk.shape[0], -1)
        if keep is not None:
            chosen = keep[start : start + values.shape[0]]
            values = values[chosen]
            mask_chunk = None if mask_chunk is None else mask_chunk[torch.from_numpy(chosen)]
        if values.shape[0] == 0:
            continue
        index = _bin_index(values, low, scale, bins).reshape(-1)
        if mask_chunk is None:
            negative += np.bincount(index, minlength=bins)
            continue
        _check_binary(torch.as_tensor(mask_chunk), "masks")
        labelled = connected_regions(torch.as_tensor(mask_chunk)).reshape(-1)
        anomalous = labelled > 0
        negative += np.bincount(index[~anomalous], minlength=bins)
        if anomalous.any():
            sizes = np.bincount(labelled)
            positive += np.bincount(index[anomalous], minlength=bins)
            overlap += np.bincount(index[anomalous], weights=1.0 / sizes[labelled[anomalous]], minlength=bins)
            regions += int(labelled.max())
    return PixelHistograms(low, high, bins, negative, positive, overlap, regions)


def _counts_at_edges(h: PixelHistograms):
    """The non-empty bins from the highest down, their counts, and the true and false positives
    at each bin's lower edge taken as the threshold."""
    used = np.nonzero((h.positive > 0) | (h.negative > 0))[0][::-1]
    positive, negative = h.positive[used].astype(np.float64), h.negative[used].astype(np.float64)
    return used, positive, negative, np.cumsum(positive), np.cumsum(negative)


def metrics_from_histograms(histograms: PixelHistograms, fpr_limit: float = 0.3) -> dict[str, float]:
    """Pixel AUROC, AUPRO and F1-max at the bins' edges, each with a rigorous error bound.

    Thresholds at bin edges are thresholds of the exact curves, so the binned ROC and PRO
    curves are the exact ones sampled at those points and joined by straight lines. Within
    one bin the exact curve is monotone between the same two end points, so it stays inside
    their rectangle and the straight line (the rectangle's midpoint in area) is off by at most
    half of it: |AUROC_binned - AUROC_exact| <= 0.5 * sum_b pos_b * neg_b / (P * N), i.e. half
    of the pairs whose order the bins hide. For AUPRO the same holds with dFPR_b * dPRO_b
    (the bin cut by ``fpr_limit`` counts its whole part left of the limit), over ``fpr_limit``.
    F1-max at the edges is reached by a real threshold (a lower bound); within a bin F1 is at
    most 2 TP_incl / (TP_incl + FP_excl + P), which gives the upper bound.
    """
    h = histograms
    n_positive, n_negative = int(h.positive.sum()), int(h.negative.sum())
    if n_positive == 0 or n_negative == 0:
        return {}
    used, pos, neg, tp, fp = _counts_at_edges(h)
    ovl = h.overlap[used]
    fp_before = fp - neg
    tpr = np.concatenate([[0.0], tp / n_positive])
    fpr = np.concatenate([[0.0], fp / n_negative])
    results: dict[str, float] = {"pixel_auroc": float(np.trapezoid(tpr, fpr))}
    results["pixel_auroc_error_bound"] = float(0.5 * np.sum(pos * neg) / (n_positive * n_negative))

    f1 = 2 * tp / (tp + fp + n_positive)
    results["pixel_f1_max"] = float(f1.max())
    upper = 2 * tp / (tp + fp_before + n_positive)
    results["pixel_f1_max_error_bound"] = float(max(upper.max() - f1.max(), 0.0))

    if h.regions > 0:
        pro = np.concatenate([[0.0], np.cumsum(ovl) / h.regions])
        results["pixel_aupro"] = _area_up_to(torch.from_numpy(fpr), torch.from_numpy(pro), fpr_limit)
        d_fpr, d_pro, left = np.diff(fpr), np.diff(pro), fpr[:-1]
        inside = left < fpr_limit
        whole = fpr[1:] <= fpr_limit
        width = np.minimum(d_fpr, fpr_limit - left)
        area = np.where(whole, 0.5, 1.0) * width * d_pro
        results["pixel_aupro_error_bound"] = float(np.sum(area[inside]) / fpr_limit)
    results["pixel_metrics_binned"] = True
    results["pixel_metrics_bins"] = h.bins
    return results


def f1_threshold(histograms: PixelHistograms) -> float:
    """The bin edge whose threshold (scores >= edge are anomalous) gives the binned F1-max."""
    h = histograms
    n_positive = int(h.positive.sum())
    if n_positive == 0:
        raise ValueError("no anomalous pixels: no F1 threshold")
    used, _, _, tp, fp = _counts_at_edges(h)
    return h.edge(int(used[int(np.argmax(2 * tp / (tp + fp + n_positive)))]))


def binned_pixel_metrics(
    maps, masks, fpr_limit: float = 0.3, bins: int = DEFAULT_BINS, chunk_size: int = DEFAULT_CHUNK_IMAGES
) -> dict[str, float]:
    """Pixel AUROC, AUPRO and F1-max over chunks of images (tensors or StoredArrays), memory flat
    in the number of images, with ``*_error_bound`` keys bounding the distance to the exact values."""
    return metrics_from_histograms(pixel_histograms(maps, masks, bins, chunk_size), fpr_limit)
