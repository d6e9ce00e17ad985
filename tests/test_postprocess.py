"""Thresholds and normalisation learned on validation data, and manual thresholds."""

import math

import pytest
import torch
from adcore.artifacts import predictions_table as _predictions_table
from adcore.engine import Predictions
from adcore.postprocess import PostProcessor, learn_threshold
from tiny_detectors import TinyMean


def test_f1_threshold_when_validation_has_anomalies():
    scores = torch.tensor([1.0, 2.0, 3.0, 10.0, 11.0, 12.0])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    post = PostProcessor()
    summary = post.calibrate(scores, labels)
    assert summary["image_threshold_rule"] == "f1"
    assert float(post.image_threshold) == pytest.approx(10.0)  # lowest anomaly: F1 = 1
    assert (float(post.image_min), float(post.image_max)) == (1.0, 12.0)


def test_quantile_threshold_when_validation_is_all_normal():
    scores = torch.linspace(0, 100, 101)
    for labels in (torch.zeros(101, dtype=torch.long), None):
        post = PostProcessor()
        summary = post.calibrate(scores, labels)
        assert summary["image_threshold_rule"] == "quantile"
        assert float(post.image_threshold) == pytest.approx(99.0)  # 0.99 quantile
        assert float(post.image_threshold) > float(scores.min())  # not "flag everything"
    post = PostProcessor()
    post.calibrate(scores, None, normal_quantile=0.9)
    assert float(post.image_threshold) == pytest.approx(90.0)


def test_quantile_ignores_anomalies_only_when_labels_say_so():
    # With labels but only normal images among the low scores: rule is quantile of normals.
    threshold, rule = learn_threshold(torch.tensor([5.0, 6.0, 7.0]), torch.tensor([0, 0, 0]), 0.5)
    assert (threshold, rule) == (pytest.approx(6.0), "quantile")
    with pytest.raises(ValueError, match="no normal samples"):
        learn_threshold(torch.tensor([5.0, 6.0]), torch.tensor([1, 1]), 0.99)


def test_pixel_threshold_f1_with_masks_and_quantile_without():
    maps = torch.zeros(2, 1, 4, 4)
    maps[0] = torch.arange(16.0).view(1, 4, 4) / 10  # 0 .. 1.5
    maps[1] = 0.05
    maps[1, 0, 0, 0] = 9.0
    masks = torch.zeros(2, 1, 4, 4)
    masks[1, 0, 0, 0] = 1
    post = PostProcessor()
    summary = post.calibrate(torch.tensor([1.5, 9.0]), torch.tensor([0, 1]), maps, masks)
    assert summary["pixel_threshold_rule"] == "f1"
    assert float(post.pixel_threshold) == pytest.approx(9.0)
    assert (float(post.pixel_min), float(post.pixel_max)) == (0.0, 9.0)

    normal_only = PostProcessor()
    summary = normal_only.calibrate(torch.tensor([1.5, 9.0]), torch.tensor([0, 1]), maps, torch.zeros_like(masks))
    assert summary["pixel_threshold_rule"] == "quantile"
    # Quantile over the normal image's maps only (labels say image 1 is anomalous).
    assert float(normal_only.pixel_threshold) == pytest.approx(float(torch.quantile(maps[0].flatten(), 0.99)))


def test_normalisation_puts_threshold_at_half_and_clips():
    post = PostProcessor()
    post.calibrate(torch.tensor([0.0, 10.0, 40.0, 100.0]), torch.tensor([0, 0, 1, 1]))
    assert float(post.image_threshold) == pytest.approx(40.0)
    normalized = post.normalize_scores(torch.tensor([40.0, 65.0, 15.0, -1000.0, 1000.0]))
    # (x - 40) / (100 - 0) + 0.5
    assert normalized.tolist() == pytest.approx([0.5, 0.75, 0.25, 0.0, 1.0])
    assert normalized.min() >= 0 and normalized.max() <= 1


def test_map_normalisation_uses_pixel_statistics():
    maps = torch.tensor([[[[0.0, 2.0], [4.0, 8.0]]]])
    masks = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]]])
    post = PostProcessor()
    post.calibrate(torch.tensor([1.0, 2.0]), torch.tensor([0, 1]), maps, masks)
    assert float(post.pixel_threshold) == pytest.approx(4.0)
    assert post.normalize_maps(maps).flatten().tolist() == pytest.approx([0.0, 0.25, 0.5, 1.0])


def test_uncalibrated_normalisation_is_refused():
    post = PostProcessor()
    assert not post.is_calibrated
    with pytest.raises(RuntimeError, match="no image threshold"):
        post.normalize_scores(torch.tensor([1.0]))
    with pytest.raises(RuntimeError, match="no pixel threshold"):
        post.normalize_maps(torch.zeros(1, 1, 2, 2))
    assert all(value is None for value in post.summary().values())


def _predictions(scores):
    return Predictions(
        paths=[f"img{i}.png" for i in range(len(scores))],
        scores=torch.tensor(scores),
        maps=None,
        labels=None,
        masks=None,
    )


def test_manual_threshold_changes_verdicts_and_normalised_scores():
    detector = TinyMean()
    detector.post_processor.calibrate(torch.tensor([0.0, 10.0, 40.0, 100.0]), torch.tensor([0, 0, 1, 1]))
    predictions = _predictions([20.0, 50.0, 90.0])
    learned = _predictions_table(detector, predictions)
    assert [row["is_anomalous"] for row in learned] == [False, True, True]  # threshold 40

    detector.post_processor.set_manual_threshold(image=60.0)
    manual = _predictions_table(detector, predictions)
    assert [row["is_anomalous"] for row in manual] == [False, False, True]
    assert [row["normalized_score"] for row in manual] == pytest.approx([0.1, 0.4, 0.8])
    assert float(detector.post_processor.normalize_scores(torch.tensor([60.0]))) == pytest.approx(0.5)

    detector.post_processor.set_manual_threshold(pixel=3.0)
    assert float(detector.post_processor.pixel_threshold) == 3.0
    assert float(detector.post_processor.image_threshold) == 60.0  # untouched by a pixel-only override


def test_manual_threshold_without_calibration_gives_usable_scores():
    # No validation data (val_split none) but a manual threshold: verdicts and normalised
    # scores must agree (threshold at 0.5), not be NaN.
    detector = TinyMean()
    detector.post_processor.set_manual_threshold(image=5.0)
    rows = _predictions_table(detector, _predictions([1.0, 5.0, 9.0]))
    assert [row["is_anomalous"] for row in rows] == [False, True, True]
    normalized = [row["normalized_score"] for row in rows]
    assert not any(math.isnan(v) for v in normalized)
    assert normalized[0] < 0.5 and normalized[1] == pytest.approx(0.5) and normalized[2] > 0.5


def test_post_processing_state_is_in_the_state_dict():
    detector = TinyMean()
    detector.post_processor.calibrate(torch.tensor([1.0, 3.0]), torch.tensor([0, 1]))
    state = detector.state_dict()
    assert float(state["post_processor.image_threshold"]) == pytest.approx(3.0)
    assert state["post_processor.image_threshold"].dtype == torch.float64
