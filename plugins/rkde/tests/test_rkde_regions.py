"""R-KDE's region pieces on hand-checkable cases: painting, filtering, the grid, RoI features."""

import pytest
import torch
from adcore.components import roi_features
from adcore_rkde.regions import GridRegions, filter_regions, grid_boxes, paint_regions


def test_paint_regions_hand_checked():
    regions = torch.tensor(
        [
            [0.0, 0.0, 2.0, 1.0, 3.0],  # pixels (x 0-1, y 0)
            [1.0, 0.0, 3.0, 2.0, 5.0],  # pixels (x 1-2, y 0-1): wins where both cover
            [3.0, 2.0, 5.0, 3.0, 0.5],  # below the background: does not lower it
        ]
    )
    expected = torch.tensor(
        [
            [3.0, 5.0, 5.0, 1.0, 1.0],
            [1.0, 5.0, 5.0, 1.0, 1.0],
            [1.0, 1.0, 1.0, 1.0, 1.0],
            [1.0, 1.0, 1.0, 1.0, 1.0],
        ]
    )
    assert torch.equal(paint_regions(regions, (4, 5), background=1.0), expected)
    # Fractional boxes: a pixel counts when its centre is inside [x0, x1) x [y0, y1).
    half = torch.tensor([[0.4, 0.6, 1.5, 1.6, 2.0]])
    assert torch.equal(paint_regions(half, (2, 2), 0.0), torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    assert torch.equal(paint_regions(torch.zeros(0, 5), (2, 3), -4.0), torch.full((2, 3), -4.0))


def test_min_box_size_drops_boxes_with_a_short_side():
    boxes = torch.tensor([[0.0, 0.0, 30.0, 30.0], [0.0, 0.0, 30.0, 20.0], [40.0, 40.0, 60.0, 70.0]])
    kept, conf = filter_regions(boxes, torch.tensor([0.9, 0.8, 0.7]), (100, 100), 25, 0.0, 1.0, 10)
    assert kept.tolist() == [[0.0, 0.0, 30.0, 30.0]] and conf.tolist() == pytest.approx([0.9])
    kept, _ = filter_regions(boxes, torch.tensor([0.9, 0.8, 0.7]), (100, 100), 20, 0.0, 1.0, 10)
    assert len(kept) == 3


def test_confidence_threshold_drops_unconfident_boxes():
    boxes = torch.tensor([[0.0, 0.0, 30.0, 30.0], [50.0, 50.0, 90.0, 90.0]])
    kept, conf = filter_regions(boxes, torch.tensor([0.2, 0.6]), (100, 100), 0, 0.5, 1.0, 10)
    assert kept.tolist() == [[50.0, 50.0, 90.0, 90.0]] and conf.tolist() == pytest.approx([0.6])


def test_iou_threshold_suppresses_overlapping_less_confident_boxes():
    # IoU of these two is 50 / 150 = 1/3.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    confidences = torch.tensor([0.5, 0.9, 0.1])
    kept, conf = filter_regions(boxes, confidences, (100, 100), 0, 0.0, 0.3, 10)
    assert kept.tolist() == [[5.0, 0.0, 15.0, 10.0], [50.0, 50.0, 60.0, 60.0]]  # most confident first
    kept, conf = filter_regions(boxes, confidences, (100, 100), 0, 0.0, 0.4, 10)
    assert conf.tolist() == pytest.approx([0.9, 0.5, 0.1])


def test_max_detections_keeps_the_most_confident_and_boxes_are_clipped():
    boxes = torch.tensor([[float(10 * i), 0.0, float(10 * i + 8), 8.0] for i in range(6)])
    confidences = torch.tensor([0.1, 0.6, 0.3, 0.9, 0.2, 0.5])
    kept, conf = filter_regions(boxes, confidences, (100, 100), 0, 0.0, 0.5, 3)
    assert conf.tolist() == pytest.approx([0.9, 0.6, 0.5])
    assert kept[:, 0].tolist() == [30.0, 10.0, 50.0]
    clipped, _ = filter_regions(torch.tensor([[-5.0, -5.0, 120.0, 40.0]]), torch.ones(1), (50, 100), 0, 0.0, 1.0, 5)
    assert clipped.tolist() == [[0.0, 0.0, 100.0, 40.0]]


def test_grid_covers_every_pixel_at_every_scale():
    boxes = grid_boxes((256, 256), scales=(0.25, 0.5), overlap=0.5)
    small, large = boxes[:49], boxes[49:]
    assert len(boxes) == 49 + 9  # 64 px boxes every 32 px (7 x 7), 128 px every 64 px (3 x 3)
    assert torch.all(small[:, 2] - small[:, 0] == 64) and torch.all(large[:, 3] - large[:, 1] == 128)
    for part in (small, large):
        regions = torch.cat([part, torch.ones(len(part), 1)], dim=1)
        assert torch.all(paint_regions(regions, (256, 256), 0.0) == 1.0)
    # Non-square images and a side the stride does not divide: the last box is flush with the border.
    odd = grid_boxes((100, 150), scales=(0.3,), overlap=0.0)
    assert odd[:, 2].max() == 150 and odd[:, 3].max() == 100 and odd[:, :2].min() == 0


def test_grid_objectness_is_the_relative_feature_energy():
    feature = torch.zeros(1, 4, 8, 8)
    feature[0, :, :4, :4] = 1.0  # the backbone responds only in the top-left quarter
    boxes, confidence = GridRegions(scales=(0.5,), overlap=0.0)([feature], [4], (32, 32))
    assert boxes[0].tolist() == [[0, 0, 16, 16], [16, 0, 32, 16], [0, 16, 16, 32], [16, 16, 32, 32]]
    assert confidence[0].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0], abs=1e-6)


def test_roi_features_read_the_box_on_every_level():
    # A 64 px image: stride-4 and stride-8 maps, each uniform (with a margin) under one box.
    fine, coarse = torch.zeros(1, 2, 16, 16), torch.zeros(1, 3, 8, 8)
    fine[0, 0, :6, :6], coarse[0, 2, 3:, 3:] = 7.0, 3.0
    boxes = [torch.tensor([[0.0, 0.0, 16.0, 16.0], [32.0, 32.0, 64.0, 64.0]])]
    features = roi_features([fine, coarse], [4, 8], boxes, output_size=2)
    assert features.shape == (2, 2 * 4 + 3 * 4)
    torch.testing.assert_close(features[0, :4], torch.full((4,), 7.0))  # channel 0 of the fine map
    torch.testing.assert_close(features[1, -4:], torch.full((4,), 3.0))  # channel 2 of the coarse map
    assert features[0, -4:].abs().max() == 0 and features[1, :4].abs().max() == 0
