"""adcore's conformance kit on the example plugin, plus the method's own property."""

import pytest
import torch
from adcore.batch import Batch
from adcore.plugins import create_detector
from adcore_sdk.conformance import DetectorConformance


class TestPixelZScoreConformance(DetectorConformance):
    detector = "pixel-zscore"
    params = {"image_size": 64}  # noqa: RUF012 (read-only configuration)


def test_z_score_of_a_pixel_that_moved_by_three_stds_is_three():
    torch.manual_seed(0)
    images = torch.randn(50, 3, 16, 16)
    detector = create_detector("pixel-zscore", image_size=16, smoothing_sigma=0.0, map_sigma=0.0, min_std=1e-6)
    detector.fit_begin()
    detector.fit_batch(Batch(image=images, path=[""] * 50))
    detector.fit_end()
    detector.is_fitted.fill_(True)
    probe = detector.pixel_mean.clone().unsqueeze(0)
    probe[0, 1, 5, 7] += 3 * detector.pixel_std[1, 5, 7]
    anomaly_map = detector(probe).anomaly_map
    assert anomaly_map[0, 0, 5, 7].item() == pytest.approx(3.0, abs=1e-4)
    assert anomaly_map.flatten().topk(2).values[1] < 1e-4  # every other pixel sits at its mean
