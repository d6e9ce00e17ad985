"""Metrics on hand-made cases whose values are worked out by hand in the comments."""

import math

import pytest
import torch
from adcore.metrics import aupro, compute_metrics, connected_regions, f1_max, image_auroc, pixel_auroc

LABELS = torch.tensor([0, 0, 1, 1])


# -- image AUROC ------------------------------------------------------------------------------
def test_auroc_perfect_and_inverted():
    assert image_auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), LABELS) == pytest.approx(1.0)
    assert image_auroc(torch.tensor([0.9, 0.8, 0.2, 0.1]), LABELS) == pytest.approx(0.0)


def test_auroc_mixed_case():
    # positives 0.35, 0.8; negatives 0.1, 0.4: of the 4 (pos, neg) pairs only 0.35 < 0.4 is
    # mis-ordered -> 3/4.
    assert image_auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), LABELS) == pytest.approx(0.75)


def test_auroc_ties_count_half():
    # positives 2, 3; negatives 1, 2: pairs 2>1, 2=2 (half), 3>1, 3>2 -> 3.5/4.
    assert image_auroc(torch.tensor([1.0, 2.0, 2.0, 3.0]), LABELS) == pytest.approx(0.875)


@pytest.mark.parametrize(
    "scores",
    [
        [30.0, 20.0, 90.0, 97.0],  # a sigmoid would squash 90 and 97 (and 20, 30) into ties at 1.0
        [1000.0, 1001.0, 1002.0, 1003.0],
        [-50.0, -40.0, -30.0, -20.0],
        [1e6, 1e6 + 1, 1e6 + 2, 1e6 + 3],
    ],
)
def test_auroc_of_raw_scores_outside_unit_interval(scores):
    assert image_auroc(torch.tensor(scores), LABELS) == pytest.approx(1.0)


def test_auroc_is_invariant_to_raw_units():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    assert image_auroc(scores * 1000 + 5, LABELS) == pytest.approx(0.75)


def test_auroc_one_class_is_nan_and_non_binary_labels_are_refused():
    assert math.isnan(image_auroc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])))
    with pytest.raises(ValueError, match="0/1"):
        image_auroc(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0, 1, 2]))


# -- F1-max ----------------------------------------------------------------------------------
def test_f1_max_value_and_threshold_in_raw_units():
    # labels 0 1 0 1 1 for scores 1..5. Predicting ">= t":
    #   t=1: P 3/5 R 1 -> 0.75   t=2: P 3/4 R 1 -> 6/7   t=3: P 2/3 R 2/3 -> 2/3
    #   t=4: P 1 R 2/3 -> 0.8    t=5: P 1 R 1/3 -> 0.5     best: 6/7 at t=2.
    labels = torch.tensor([0, 1, 0, 1, 1])
    raw = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]) * 100 + 1000  # 1100 .. 1500
    f1, threshold = f1_max(raw, labels)
    assert f1 == pytest.approx(6 / 7, abs=1e-6)
    assert threshold == pytest.approx(1200.0)


def test_f1_max_threshold_reproduces_its_f1_when_applied():
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(40, generator=g) * 250 + 17
    labels = (torch.rand(40, generator=g) > 0.6).long()
    f1, threshold = f1_max(scores, labels)
    predicted = scores >= threshold
    tp = int((predicted & (labels == 1)).sum())
    fp = int((predicted & (labels == 0)).sum())
    fn = int((~predicted & (labels == 1)).sum())
    assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(f1, abs=1e-6)
    assert threshold in scores.tolist()  # a threshold is one of the scores, in raw units


def test_f1_max_perfect_separation():
    f1, threshold = f1_max(torch.tensor([3.0, 4.0, 50.0, 60.0]), LABELS)
    assert f1 == pytest.approx(1.0)
    assert threshold == pytest.approx(50.0)


# -- AUPRO -----------------------------------------------------------------------------------
def _two_regions(score_small: float, score_large: float, normal_scores: torch.Tensor):
    """One 10x10 image: region A (2x2 = 4 px) and region B (4x4 = 16 px), 80 normal pixels."""
    mask = torch.zeros(1, 1, 10, 10)
    mask[0, 0, 0:2, 0:2] = 1  # A
    mask[0, 0, 5:9, 5:9] = 1  # B (not touching A)
    maps = torch.zeros(1, 1, 10, 10)
    maps[0, 0, 0:2, 0:2] = score_small
    maps[0, 0, 5:9, 5:9] = score_large
    maps[~mask.bool()] = normal_scores
    return maps, mask


def test_aupro_perfect_map_is_one():
    mask = torch.zeros(2, 1, 16, 16)
    mask[0, 0, 2:6, 2:6] = 1
    mask[1, 0, 8:15, 1:4] = 1
    assert aupro(mask.clone(), mask) == pytest.approx(1.0)
    # Any strictly order-preserving map is perfect too.
    assert aupro(mask * 7 + 0.5 + 0.01 * torch.rand(mask.shape), mask) == pytest.approx(1.0)


def test_aupro_averages_regions_not_pixels():
    # A (4 px) is above every normal pixel: PRO 0.5 from FPR 0. B (16 px) is below every
    # normal pixel: it is only reached at FPR 1. Up to FPR 0.3 the PRO curve is flat at 0.5,
    # so the normalised area is 0.5. (Pixel-weighted it would be 4/20 = 0.2.)
    normal = torch.linspace(1, 5, 80)
    maps, mask = _two_regions(10.0, 0.0, normal)
    assert aupro(maps, mask) == pytest.approx(0.5)


def test_aupro_regions_in_different_images_are_separate():
    normal = torch.linspace(1, 5, 80)
    maps, mask = _two_regions(10.0, 0.0, normal)
    only_a, only_b = mask.clone(), mask.clone()
    only_a[0, 0, 5:9, 5:9] = 0
    only_b[0, 0, 0:2, 0:2] = 0
    maps_a, maps_b = maps.clone(), maps.clone()
    maps_a[0, 0, 5:9, 5:9] = 0.0  # B's pixels become low-scored normals in image a
    maps_b[0, 0, 0:2, 0:2] = 0.0
    # Image a: region A detected at FPR 0; image b: region B (score 0) never before FPR ~1.
    # Normal pixels: 96 + 84 = 180; the 20 normals scored 0 rank last (FPR > 0.88 > 0.3).
    value = aupro(torch.cat([maps_a, maps_b]), torch.cat([only_a, only_b]))
    assert value == pytest.approx(0.5)


def test_aupro_partial_detection_by_hand():
    # 80 normal pixels, 8 of them (10 %) above region B. Curve: (0, 0.5) after A, flat to
    # FPR 0.1, then B jumps PRO to 1. Area to 0.3: 0.1*0.5 + 0.2*1.0 = 0.25 -> 0.25/0.3.
    normal = torch.cat([torch.full((8,), 8.0), torch.linspace(1, 5, 72)])
    maps, mask = _two_regions(10.0, 6.0, normal)
    assert aupro(maps, mask) == pytest.approx(0.25 / 0.3)


def test_aupro_respects_fpr_limit():
    normal = torch.cat([torch.full((8,), 8.0), torch.linspace(1, 5, 72)])
    maps, mask = _two_regions(10.0, 6.0, normal)
    # Limit 0.05: B not yet found -> flat 0.5.
    assert aupro(maps, mask, fpr_limit=0.05) == pytest.approx(0.5)
    # Limit 1.0: 0.1*0.5 + 0.9*1.0 = 0.95.
    assert aupro(maps, mask, fpr_limit=1.0) == pytest.approx(0.95)


def test_aupro_interpolates_through_ties():
    # A above everything; B tied with all 80 normals. Curve (0,0) -> (0,0.5) -> (1,1): at
    # FPR 0.3 the interpolated PRO is 0.65; area 0.3*(0.5+0.65)/2 = 0.1725 -> 0.575.
    maps, mask = _two_regions(10.0, 5.0, torch.full((80,), 5.0))
    assert aupro(maps, mask) == pytest.approx(0.575)


def test_aupro_without_regions_is_nan():
    assert math.isnan(aupro(torch.rand(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)))


def test_connected_regions_are_8_connected_and_unique_across_images():
    mask = torch.zeros(2, 1, 6, 6)
    mask[0, 0, 0, 0] = mask[0, 0, 1, 1] = 1  # diagonal neighbours: one region
    mask[0, 0, 4, 4] = 1  # a second region
    mask[1, 0, 2, 2] = 1  # third, in the next image
    regions = connected_regions(mask)
    assert regions.max() == 3
    assert regions[0, 0, 0] == regions[0, 1, 1] != regions[0, 4, 4]
    assert regions[1, 2, 2] not in (regions[0, 0, 0], regions[0, 4, 4])


# -- pixel AUROC and the summary ---------------------------------------------------------------
def test_pixel_auroc_by_hand():
    # anomalous pixels 9, 3; normal 2, 4: pairs 9>2, 9>4, 3>2, 3<4 -> 3/4.
    maps = torch.tensor([[[[9.0, 2.0], [4.0, 3.0]]]])
    masks = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert pixel_auroc(maps, masks) == pytest.approx(0.75)
    assert pixel_auroc(maps * 100 + 40, masks) == pytest.approx(0.75)


def test_compute_metrics_reports_what_the_ground_truth_allows():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    only_image = compute_metrics(scores, LABELS)
    assert set(only_image) == {"image_auroc", "image_f1_max"}
    assert only_image["image_auroc"] == pytest.approx(0.75)

    masks = torch.zeros(4, 1, 4, 4)
    masks[2:, :, 1:3, 1:3] = 1
    full = compute_metrics(scores, LABELS, maps=masks * 2.0, masks=masks)
    assert set(full) == {"image_auroc", "image_f1_max", "pixel_auroc", "pixel_aupro", "pixel_f1_max"}
    assert full["pixel_auroc"] == pytest.approx(1.0)
    assert full["pixel_aupro"] == pytest.approx(1.0)
    assert compute_metrics(scores, torch.zeros(4, dtype=torch.long)) == {}


@pytest.mark.parametrize("levels", [None, 20])
def test_pixel_metrics_from_one_sort_equal_the_separate_computations(levels):
    from adcore.metrics import aupro, f1_max, pixel_auroc, pixel_metrics

    generator = torch.Generator().manual_seed(3)
    masks = torch.zeros(6, 1, 48, 48)
    masks[3:, :, 10:20, 12:30] = 1
    masks[4, :, 30:40, 30:44] = 1  # a second region in one image
    maps = torch.rand(6, 1, 48, 48, generator=generator) + 0.6 * masks
    if levels:  # many ties: thresholds must sit between distinct scores
        maps = (maps * levels).round() / levels
    combined = pixel_metrics(maps, masks)
    assert combined["pixel_auroc"] == pytest.approx(pixel_auroc(maps, masks), abs=1e-6)
    assert combined["pixel_aupro"] == pytest.approx(aupro(maps, masks), abs=1e-12)
    assert combined["pixel_f1_max"] == pytest.approx(f1_max(maps.flatten(), masks.flatten().long())[0], abs=1e-6)
    with pytest.raises(ValueError, match="masks must be 0/1"):
        pixel_metrics(maps, masks * 2)


# -- binned pixel metrics (maps spilled to disk) ----------------------------------------------
def _random_case(seed: int, levels: int | None = None):
    """Maps and masks with a random number of regions per image, overlapping score ranges."""
    generator = torch.Generator().manual_seed(seed)
    n, size = int(torch.randint(2, 7, (1,), generator=generator)), 24
    masks = torch.zeros(n, 1, size, size)
    for i in range(n):
        for _ in range(int(torch.randint(0, 3, (1,), generator=generator))):
            y, x, h, w = torch.randint(0, size - 4, (4,), generator=generator).tolist()
            masks[i, :, y : y + 1 + h % 8, x : x + 1 + w % 8] = 1
    masks[0, :, 0:3, 0:3] = 1  # at least one region
    shift = float(torch.rand(1, generator=generator)) * 2
    maps = torch.randn(n, 1, size, size, generator=generator).exp() + shift * masks
    if levels:  # many ties
        maps = (maps * levels).round() / levels
    return maps, masks


@pytest.mark.parametrize("bins", [4, 16, 64, 1024])
def test_binned_error_bounds_are_true_bounds(bins):
    from adcore.metrics import binned_pixel_metrics, pixel_metrics

    for seed in range(25):
        maps, masks = _random_case(seed, levels=10 if seed % 3 == 0 else None)
        exact = pixel_metrics(maps, masks)
        binned = binned_pixel_metrics(maps, masks, bins=bins, chunk_size=2)
        assert binned["pixel_metrics_binned"] is True and binned["pixel_metrics_bins"] == bins
        for key in ("pixel_auroc", "pixel_aupro", "pixel_f1_max"):
            assert abs(binned[key] - exact[key]) <= binned[f"{key}_error_bound"] + 1e-9, (seed, key)
        assert binned["pixel_f1_max"] <= exact["pixel_f1_max"] + 1e-12  # edges are real thresholds


def test_binned_metrics_with_many_bins_match_the_exact_ones_on_structured_maps():
    from adcore.metrics import binned_pixel_metrics, pixel_metrics

    generator = torch.Generator().manual_seed(3)
    masks = torch.zeros(6, 1, 48, 48)
    masks[3:, :, 10:20, 12:30] = 1
    masks[4, :, 30:40, 30:44] = 1
    maps = torch.rand(6, 1, 48, 48, generator=generator) + 0.6 * masks
    exact = pixel_metrics(maps, masks)
    binned = binned_pixel_metrics(maps, masks, chunk_size=4)  # the default 2**20 bins
    for key in ("pixel_auroc", "pixel_aupro", "pixel_f1_max"):
        assert binned[f"{key}_error_bound"] < 1e-4
        assert binned[key] == pytest.approx(exact[key], abs=binned[f"{key}_error_bound"] + 1e-12)


def test_binned_metrics_of_separable_maps_are_exact_and_by_hand():
    from adcore.metrics import binned_pixel_metrics

    masks = torch.zeros(2, 1, 4, 4)
    masks[1, :, 1:3, 1:3] = 1
    maps = masks * 2.0  # normal 0, anomalous 2: two bins far apart, no shared bin
    binned = binned_pixel_metrics(maps, masks, bins=8)
    assert binned["pixel_auroc"] == 1.0 and binned["pixel_auroc_error_bound"] == 0.0
    assert binned["pixel_aupro"] == pytest.approx(1.0) and binned["pixel_f1_max"] == 1.0
    # One bin: every pair's order is hidden, AUROC 0.5 with the largest bound 0.5.
    one = binned_pixel_metrics(maps, masks, bins=1)
    assert one["pixel_auroc"] == 0.5 and one["pixel_auroc_error_bound"] == 0.5
    assert binned_pixel_metrics(maps, torch.zeros_like(masks)) == {}
    with pytest.raises(ValueError, match="NaN"):
        binned_pixel_metrics(maps * float("nan"), masks)


def test_image_auroc_and_f1_max_match_torchmetrics_with_and_without_ties():
    """The sort-based curves give torchmetrics' numbers (it is a test dependency, not a runtime one)."""
    from torchmetrics.functional.classification import binary_auroc, binary_precision_recall_curve

    generator = torch.Generator().manual_seed(0)
    for case in range(60):
        n = int(torch.randint(2, 200, (1,), generator=generator))
        if case % 2:  # few distinct values: many ties, raw units far outside [0, 1]
            scores = torch.randint(0, 12, (n,), generator=generator).float() * 37.5 + 900.0
        else:
            scores = torch.randn(n, generator=generator) * 50
        labels = torch.randint(0, 2, (n,), generator=generator)
        if labels.min() == labels.max():
            continue
        unit = ((scores - scores.min()) / (scores.max() - scores.min()).clamp_min(1e-12)).double()
        assert image_auroc(scores, labels) == pytest.approx(float(binary_auroc(unit, labels)), abs=1e-6)
        precision, recall, _ = binary_precision_recall_curve(unit, labels)
        expected = float((2 * precision * recall / (precision + recall).clamp_min(1e-12))[:-1].max())
        assert f1_max(scores, labels)[0] == pytest.approx(expected, abs=1e-6)


def test_metrics_do_not_import_torchmetrics():
    import subprocess
    import sys

    code = "import sys, adcore.metrics as m, torch; m.image_auroc(torch.rand(4), torch.tensor([0,1,0,1])); print('torchmetrics' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
