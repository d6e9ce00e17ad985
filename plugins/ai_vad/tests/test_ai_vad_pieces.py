"""AI-VAD's pieces on hand-checkable inputs: velocity histograms, background regions, densities, scores."""

import math
import warnings

import pytest
import torch
from adcore import VideoBatch
from adcore.components import roi_features
from adcore_ai_vad.density import GmmDensity, GroupedKnn, MinMax
from adcore_ai_vad.features import OpenCvFlow, velocity_histograms
from adcore_ai_vad.model import AiVad, paint
from adcore_ai_vad.regions import BackgroundRegions, foreground_boxes


def test_orientation_histogram_of_a_hand_made_flow_field():
    flow = torch.zeros(2, 10, 10)
    flow[0, :, :5] = 2.0  # left half: 2 px to the right (angle 0 -> bin 0)
    flow[1, :, 5:] = -1.0  # right half: 1 px up (rows decrease: angle 3 pi / 2 -> bin 6 of 8)
    boxes = torch.tensor([[0.0, 0.0, 5.0, 10.0], [5.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [3.0, 3.0, 3.0, 8.0]])
    hist = velocity_histograms(flow, boxes, 8)
    expected = torch.zeros(4, 8)
    expected[0, 0] = 2.0  # mean magnitude over the box
    expected[1, 6] = 1.0
    expected[2, 0], expected[2, 6] = 1.0, 0.5  # half the box each
    torch.testing.assert_close(hist, expected)  # the empty box stays zero


def test_orientation_bins_split_the_circle_evenly():
    angles = torch.tensor([0.1, 1.0, 2.0, 3.0, 3.5, 4.5, 5.0, 6.0])  # one per 45-degree sector
    flow = torch.stack([torch.cos(angles), torch.sin(angles)]).view(2, 1, 8)
    hist = velocity_histograms(flow, torch.tensor([[float(i), 0.0, i + 1.0, 1.0] for i in range(8)]), 8)
    assert hist.argmax(dim=1).tolist() == [int(a / (math.pi / 4)) for a in angles.tolist()]


def test_opencv_flow_measures_a_translation():
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    texture = 0.5 + 0.25 * torch.sin(xx / 3) * torch.cos(yy / 4)
    first = texture.expand(1, 3, 64, 64)
    last = torch.roll(first, shifts=2, dims=3)  # moved 2 px to the right
    for method in ("farneback", "dis"):
        flow = OpenCvFlow(method)(first, last)
        centre = flow[0, :, 16:48, 16:48].flatten(1).median(dim=1).values
        torch.testing.assert_close(centre, torch.tensor([2.0, 0.0]), atol=0.3, rtol=0)


def test_background_subtraction_finds_a_moving_square():
    background = torch.full((3, 60, 80), 0.3)
    regions = BackgroundRegions(threshold=25, min_area=30, kernel_size=3, max_regions=10)
    regions.set_background(torch.stack([background] * 5))
    frame = background.clone()
    frame[:, 10:30, 40:52] = 0.9  # a bright 12 x 20 object
    frame[:, 50, 5] = 0.9  # a single noisy pixel: removed by the opening
    boxes = regions(torch.stack([frame, background]))
    # The dilation (3 x 3) grows the object by one pixel on each side.
    torch.testing.assert_close(boxes[0], torch.tensor([[39.0, 9.0, 53.0, 31.0]]))
    assert boxes[1].shape == (0, 4)


def test_background_is_the_median_so_passing_objects_vanish():
    frames = torch.full((5, 3, 20, 20), 0.2)
    for i in range(5):
        frames[i, :, :, 4 * i : 4 * i + 4] = 1.0  # an object at a new place in every frame
    regions = BackgroundRegions(25, 1, 1, 10)
    regions.set_background(frames)
    torch.testing.assert_close(regions.background, torch.full((3, 20, 20), 0.2))


def test_small_components_are_dropped_and_largest_come_first():
    mask = torch.zeros(40, 40, dtype=torch.uint8)
    mask[2:6, 2:6] = 1  # 16 px
    mask[10:30, 10:20] = 1  # 200 px
    boxes = foreground_boxes(mask.numpy(), min_area=20, kernel_size=1, max_regions=5)
    torch.testing.assert_close(boxes, torch.tensor([[10.0, 10.0, 20.0, 30.0]]))


def test_grouped_knn_leaves_the_video_out_for_its_statistics():
    knn = GroupedKnn(n_neighbors=1, max_per_group=100)
    groups = {"a": torch.tensor([[0.0], [1.0]]), "b": torch.tensor([[3.0]]), "c": torch.tensor([[7.0]])}
    knn.fit(groups)
    # Held out: a's points are 3 and 2 from b; b is 2 from a's 1.0; c is 4 from b. min 2, max 4.
    assert float(knn.normalize.low) == 2.0 and float(knn.normalize.high) == 4.0
    torch.testing.assert_close(knn(torch.tensor([[1.0], [11.0]])), torch.tensor([(0 - 2) / 2, (4 - 2) / 2]))


def test_grouped_knn_compresses_each_video_with_kmeans_and_warns_on_one_video():
    g = torch.Generator().manual_seed(0)
    video = torch.cat([torch.randn(50, 2, generator=g) * 0.01, torch.randn(50, 2, generator=g) * 0.01 + 5])
    knn = GroupedKnn(n_neighbors=1, max_per_group=2)
    with pytest.warns(UserWarning, match="one training video"):
        knn.fit({"only": video}, torch.Generator().manual_seed(1))
    assert knn.bank.shape == (2, 2)
    assert sorted(knn.bank[:, 0].round().tolist()) == [0.0, 5.0]


def test_min_max_and_gmm_density_normalise_to_the_training_range():
    norm = MinMax()
    norm.fit(torch.tensor([2.0, 4.0, 6.0]))
    torch.testing.assert_close(norm(torch.tensor([2.0, 6.0, 10.0])), torch.tensor([0.0, 1.0, 2.0]))
    density = GmmDensity(2, seed=0)
    train = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    density.fit(train)
    scores = density(train)
    assert float(scores.min()) == pytest.approx(0.0, abs=1e-5) and float(scores.max()) == pytest.approx(1.0, abs=1e-5)
    assert float(density(torch.full((1, 3), 8.0))) > 5


def test_roi_features_average_the_box():
    features = torch.arange(16.0).view(1, 1, 4, 4)
    out = roi_features([features], [1], [torch.tensor([[0.0, 0.0, 2.0, 2.0]])], 1)
    torch.testing.assert_close(out, torch.tensor([[2.5]]))  # mean of 0, 1, 4, 5


def test_region_scores_are_summed_over_types_and_the_frame_takes_the_max(monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detector = AiVad(weights="none")
    boxes = [torch.tensor([[0.0, 0.0, 4.0, 4.0], [4.0, 4.0, 8.0, 8.0]]), torch.zeros(0, 4)]
    scores = {
        "velocity": [torch.tensor([0.2, 1.5]), torch.zeros(0)],
        "deep": [torch.tensor([0.9, 0.1]), torch.zeros(0)],
    }
    monkeypatch.setattr(detector, "scores_by_type", lambda clips: (boxes, scores))
    out = detector(torch.zeros(2, 2, 3, 8, 8))
    torch.testing.assert_close(out.pred_score, torch.tensor([1.6, 0.0]))
    torch.testing.assert_close(out.regions[0][:, 4], torch.tensor([1.1, 1.6]))
    assert out.regions[1].shape == (0, 5)
    assert out.anomaly_map.shape == (2, 1, 8, 8)
    assert float(out.anomaly_map[0, 0, 1, 1]) == pytest.approx(1.1) and float(
        out.anomaly_map[0, 0, 6, 6]
    ) == pytest.approx(1.6)


def test_paint_keeps_the_largest_covering_score():
    canvas = paint(torch.tensor([[0.0, 0.0, 2.0, 2.0, 1.0], [1.0, 1.0, 3.0, 3.0, 3.0]]), 4, 4)
    assert canvas[0, 0] == 1.0 and canvas[1, 1] == 3.0 and canvas[3, 3] == 0.0


def test_video_batch_and_bad_inputs():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detector = AiVad(weights="none")
    with pytest.raises(ValueError, match="video detector"):
        detector.check_images(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        detector.check_images(torch.full((1, 2, 3, 8, 8), float("nan")))
    batch = VideoBatch(torch.zeros(1, 3, 8, 8), ["x"], frames=torch.zeros(1, 2, 3, 8, 8))
    with pytest.raises(Exception, match="not fitted"):
        detector.predict(batch)


def test_pose_is_skipped_with_one_clear_message():
    with pytest.warns(UserWarning, match="pose features skipped") as record:
        AiVad(weights="none")
    assert len([w for w in record if "pose" in str(w.message)]) == 1
    with pytest.raises(ValueError, match="at least one feature type"):
        AiVad(weights="none", use_velocity_features=False, use_deep_features=False)
