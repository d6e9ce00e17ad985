"""The core focal loss (DRAEM, DSR) on hand-checkable cases."""

import math

import pytest
import torch
from adcore.components import focal_loss


def test_focal_loss_matches_a_hand_computation():
    # One pixel per case. Logits (0, log 3): softmax = (1/4, 3/4).
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    anomalous = torch.ones(1, 1, 1, 1)
    normal = torch.zeros(1, 1, 1, 1)
    # True class 1: p_t = 3/4 -> -(1/4)^2 * log(3/4).
    assert focal_loss(logits, anomalous, 2.0).item() == pytest.approx(-(0.25**2) * math.log(0.75), rel=1e-6)
    # True class 0: p_t = 1/4 -> -(3/4)^2 * log(1/4).
    assert focal_loss(logits, normal, 2.0).item() == pytest.approx(-(0.75**2) * math.log(0.25), rel=1e-6)
    # gamma 0 is the cross-entropy; the mean runs over pixels.
    both = torch.cat([logits, logits], dim=3)
    target = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    expected = -(math.log(0.75) + math.log(0.25)) / 2
    assert focal_loss(both, target, 0.0).item() == pytest.approx(expected, rel=1e-6)


def test_focal_loss_down_weights_easy_pixels():
    easy = torch.tensor([-5.0, 5.0]).view(1, 2, 1, 1)
    target = torch.ones(1, 1, 1, 1)
    assert focal_loss(easy, target, 2.0) < 1e-3 * focal_loss(easy, target, 0.0)
