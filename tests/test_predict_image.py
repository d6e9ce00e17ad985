"""detector.predict_image: in-memory frames scored exactly as the dataset (and so the CLI) scores files."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from adcore.artifacts import predictions_table
from adcore.data import AnomalyDataset, ImageReadError, ImageRecord, load_data
from adcore.detector import NotFittedError
from adcore.engine import Engine
from adcore.image_prediction import ImagePrediction
from helpers import anomalous_image, save_png
from PIL import Image
from tiny_detectors import TinyMean


def _engine(batch_size=4):
    return Engine(device="cpu", progress=False, batch_size=batch_size, log=lambda message: None)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A calibrated TinyMean (48x80 input: not square) and a non-square anomalous test image."""
    from helpers import make_mvtec

    root = make_mvtec(tmp_path_factory.mktemp("pi") / "category")
    splits = load_data(f"mvtec:{root}")
    detector = TinyMean(image_size=(48, 80))
    engine = _engine()
    engine.fit(detector, AnomalyDataset(splits.train, detector.input_spec))
    engine.calibrate(
        detector, engine.predict(detector, AnomalyDataset(splits.test, detector.input_spec, has_masks=True))
    )
    image, _ = anomalous_image(3, size=96)
    wide = np.concatenate([image, image[:, :50]], axis=1)  # 96 x 146: another aspect ratio than the input
    path = save_png(tmp_path_factory.mktemp("img") / "wide.png", wide)
    return detector, path, wide


def _engine_score(detector, path, batch_size):
    dataset = AnomalyDataset([ImageRecord(path)], detector.input_spec)
    return _engine(batch_size).predict(detector, dataset)


def _inputs(path, array):
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
    return {
        "path": path,
        "str path": str(path),
        "PIL": Image.open(path),
        "numpy uint8": array,
        "numpy float 0..1": array / 255.0,
        "numpy float 0..255": array.astype(np.float32),
        "tensor uint8 CHW": tensor,
        "tensor float CHW 0..1": tensor.float() / 255.0,
        "tensor HWC": torch.from_numpy(array.copy()),
        "tensor 1CHW": tensor[None],
    }


def test_every_input_kind_scores_exactly_like_the_engine(fitted):
    detector, path, array = fitted
    reference = _engine_score(detector, path, batch_size=1)
    for kind, value in _inputs(path, array).items():
        result = detector.predict_image(value)
        assert isinstance(result, ImagePrediction)
        assert result.score == float(reference.scores[0]), kind  # same preprocessing, same batch: identical
        assert abs(result.score - float(reference.scores[0])) <= 1e-5 * abs(result.score)


def test_hand_made_preprocessing_would_differ(fitted):
    """The equality above is not vacuous: torch's bilinear resize (a common hand pipeline) differs."""
    detector, path, array = fitted
    pixels = torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float()
    resized = F.interpolate(pixels, size=detector.input_spec.image_size, mode="bilinear", align_corners=False)
    hand = float(detector.predict(detector.input_spec.normalize(resized)).pred_score[0])
    assert hand != pytest.approx(detector.predict_image(path).score, rel=1e-5)


def test_result_is_at_the_images_own_resolution_and_matches_the_table(fitted):
    detector, path, array = fitted
    result = detector.predict_image(array)
    height, width = array.shape[:2]
    assert (result.width, result.height) == (width, height)
    assert result.anomaly_map.shape == (height, width) and result.anomaly_map.dtype == np.float32
    assert result.mask.shape == (height, width) and result.mask.dtype == bool
    threshold = float(detector.post_processor.pixel_threshold)
    np.testing.assert_array_equal(result.mask, result.anomaly_map.astype(np.float64) >= threshold)
    row = predictions_table(detector, _engine_score(detector, path, 1))[0]
    assert result.normalized_score == pytest.approx(row["normalized_score"], abs=1e-6)
    assert result.is_anomalous == row["is_anomalous"] is True  # the white square is found
    assert result.regions, "an anomalous image has at least one region"
    top = result.regions[0]
    assert top["peak_score"] == pytest.approx(float(result.anomaly_map.max()), rel=1e-6)
    peak_y, peak_x = np.unravel_index(np.argmax(result.anomaly_map), result.anomaly_map.shape)
    assert top["x0"] <= peak_x < top["x1"] and top["y0"] <= peak_y < top["y1"]
    assert 0 < top["area"] <= int(result.mask[top["y0"] : top["y1"], top["x0"] : top["x1"]].sum())
    summary = result.to_json()
    assert summary["map"]["max"] == pytest.approx(float(result.anomaly_map.max()))
    assert "values" not in summary["map"] and len(result.to_json(include_map=True)["map"]["values"]) == height


def test_grey_and_rgba_frames_convert_as_files_do(fitted, tmp_path):
    detector, _, array = fitted
    grey = array[..., 1]
    grey_path = save_png(tmp_path / "grey.png", grey)
    assert detector.predict_image(grey).score == detector.predict_image(grey_path).score
    rgba = np.concatenate([array, np.full(array.shape[:2] + (1,), 128, np.uint8)], axis=2)
    rgba_path = save_png(tmp_path / "rgba.png", rgba)
    assert detector.predict_image(rgba).score == detector.predict_image(rgba_path).score


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((20, 20, 3), np.nan), "NaN"),
        (np.zeros((20, 20, 2), np.uint8), "expected a frame of shape"),
        (torch.zeros(2, 3, 20, 20), "batch of 2"),
        (np.full((20, 20, 3), 300.0), "0..1 or 0..255"),
        (np.zeros((0, 20, 3), np.uint8), "empty"),
    ],
)
def test_bad_frames_are_refused_with_a_clear_error(fitted, bad, message):
    detector, _, _ = fitted
    with pytest.raises(ImageReadError, match=message):
        detector.predict_image(bad)


def test_other_types_and_unfitted_detectors_are_refused(fitted):
    detector, _, _ = fitted
    with pytest.raises(TypeError, match="cannot score a list"):
        detector.predict_image([1, 2, 3])
    with pytest.raises(NotFittedError):
        TinyMean().predict_image(np.zeros((10, 10, 3), np.uint8))


def test_without_thresholds_there_is_no_verdict_and_no_mask(fitted):
    detector, path, _ = fitted
    import copy

    fresh = copy.deepcopy(detector)
    fresh.post_processor = type(detector.post_processor)()
    result = fresh.predict_image(path)
    assert result.normalized_score is None and result.is_anomalous is None
    assert result.mask is None and result.regions == [] and result.anomaly_map is not None
