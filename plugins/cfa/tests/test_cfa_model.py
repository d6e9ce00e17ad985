"""CFA on tiny synthetic data: the memory bank, the loss, the scores and checkpoints."""

import re

import pytest
import torch
import torch.nn.functional as F
from adcore.config import build_config
from adcore.data import AnomalyDataset, load_data
from adcore.data.synthetic import make_mvtec
from adcore.detector import NotFittedError
from adcore.engine import Engine
from adcore.plugins import create_detector
from adcore_cfa.descriptor import add_coordinates
from adcore_cfa.model import LOSS_SCALE, Cfa, CfaConfig
from safetensors.torch import load_file, save_file

TINY = {"image_size": 64, "layers": (2, 3)}


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = make_mvtec(tmp_path_factory.mktemp("tiny") / "tiny", n_train=8, n_good=4, n_bad=4, size=64)
    return load_data(f"mvtec:{root}")


def _engine(**kwargs):
    return Engine(device="cpu", progress=False, batch_size=4, log=lambda message: None, **kwargs)


def _fit(splits, seed=0, **params):
    detector = create_detector("cfa", seed=seed, **{**TINY, **params})
    report = _engine(seed=seed).fit(detector, AnomalyDataset(splits.train, detector.input_spec))
    return detector, report


def _test_images(detector, splits):
    test = AnomalyDataset(splits.test, detector.input_spec, has_masks=True)
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    labels = torch.tensor([test[i]["label"] for i in range(len(test))])
    return images, labels


@pytest.fixture(scope="module")
def fitted(splits):
    return _fit(splits, epochs=3)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"gamma_c": 0}, "cfa: gamma_c must be >= 1, got 0"),
        ({"gamma_d": 0}, "cfa: gamma_d must be >= 1, got 0"),
        ({"num_neighbors": 0}, "cfa: num_neighbors must be >= 1, got 0"),
        ({"num_hard_negative_features": -1}, "cfa: num_hard_negative_features must be >= 0, got -1"),
        ({"radius": -1.0}, "cfa: radius must be >= 0, got -1.0"),
        ({"epochs": -1}, "cfa: epochs must be >= 0, got -1"),
        ({"layers": ()}, "cfa: layers must name at least one backbone level"),
        ({"layers": (2, 2)}, "cfa: layers must be distinct"),
    ],
)
def test_config_rejects_invalid_values(params, message):
    # Through the core, as command lines and create_detector build it: the core names the detector.
    with pytest.raises(ValueError, match=re.escape(message)):
        Cfa.from_config_dict(params)


def test_the_old_name_num_nearest_neighbors_still_configures_k():
    with pytest.warns(DeprecationWarning, match="num_neighbors"):
        config = build_config(CfaConfig, {"num_nearest_neighbors": 5}, "cfa")
    assert config.num_neighbors == 5


def test_gamma_d_larger_than_the_channels_is_rejected():
    with pytest.raises(ValueError, match="cfa: gamma_d=10000 exceeds the 152 channels"):
        Cfa.from_config_dict({**TINY, "gamma_d": 10_000})


def test_coordinates_span_minus_one_to_one_along_rows_and_columns():
    coords = add_coordinates(torch.zeros(2, 5, 3, 4))[:, 5:]
    assert coords.shape == (2, 2, 3, 4)
    torch.testing.assert_close(coords[0, 0, 0], torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))  # columns
    assert torch.equal(coords[0, 1, :, 0], torch.tensor([-1.0, 0.0, 1.0]))  # rows


def test_memory_bank_is_the_mean_target_feature_per_position_before_training(splits):
    detector, _ = _fit(splits, epochs=0)
    train = AnomalyDataset(splits.train, detector.input_spec)
    images = torch.stack([train[i]["image"] for i in range(len(train))])
    with torch.no_grad():
        features = detector.target_features(images)
    expected = features.mean(dim=0).flatten(1).T
    assert detector.memory_bank.shape == expected.shape == (8 * 8, sum(detector.feature_extractor.channels))
    torch.testing.assert_close(detector.memory_bank, expected, rtol=1e-4, atol=1e-5)


def test_gamma_c_clusters_the_bank_and_gamma_d_shrinks_the_descriptor(splits):
    detector, _ = _fit(splits, epochs=0, gamma_c=4, gamma_d=2)
    channels = sum(detector.feature_extractor.channels)
    assert detector.memory_bank.shape == (8 * 8 // 4, channels // 2)


def test_loss_matches_the_papers_formula_with_both_terms_active():
    detector = Cfa(CfaConfig(**TINY, radius=3.0, alpha=0.1))
    torch.manual_seed(0)
    detector.memory_bank = torch.randn(40, 8)
    features = torch.randn(30, 8, requires_grad=True)
    loss = detector.coupled_hypersphere_loss(features)
    # Reference: full squared-distance matrix, sorted, K attracted and the next J repelled.
    distances = torch.cdist(features, detector.memory_bank).square().topk(6, largest=False).values
    attraction = F.relu(distances[:, :3] - 3.0**2).mean()
    repulsion = F.relu(3.0**2 - distances[:, 3:] - 0.1).mean()
    assert attraction > 0 and repulsion > 0  # the test exercises both terms
    torch.testing.assert_close(loss, LOSS_SCALE * (attraction + repulsion))
    loss.backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_training_lowers_the_loss(fitted):
    _, report = fitted
    losses = [record["loss"] for record in report["history"]]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]
    assert losses[-1] < 0.9 * losses[0]


def test_scores_are_the_softmin_weighted_nearest_distance(fitted, splits):
    detector, _ = fitted
    detector.anomaly_map.sigma = 0.0  # no blur: the map is the upsampled patch scores
    try:
        images, _ = _test_images(detector, splits)
        with torch.no_grad():
            output = detector(images)
            features = detector.target_features(images)
    finally:
        detector.anomaly_map.sigma = 4.0
    n, d, h, w = features.shape
    distances = (
        torch.cdist(features.permute(0, 2, 3, 1).reshape(-1, d), detector.memory_bank).topk(3, largest=False).values
    )
    patch = (torch.softmax(-distances, dim=1)[:, 0] * distances[:, 0]).view(n, 1, h, w)
    expected = F.interpolate(patch, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(output.anomaly_map, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(output.pred_score, expected.flatten(1).amax(dim=1), rtol=1e-4, atol=1e-4)


def test_outputs_have_the_contracted_shapes_and_rank_defects_higher(fitted, splits):
    detector, _ = fitted
    images, labels = _test_images(detector, splits)
    with torch.no_grad():
        output = detector(images)
    assert output.pred_score.shape == (len(images),) and output.pred_score.dtype == torch.float32
    assert output.anomaly_map.shape == (len(images), 1, 64, 64)
    assert torch.isfinite(output.pred_score).all() and torch.isfinite(output.anomaly_map).all()
    assert output.pred_score[labels == 1].min() > output.pred_score[labels == 0].max()


def test_same_seed_same_scores_and_checkpoint_round_trip(splits, tmp_path):
    # Both fits here, not the module fixture: that one is fitted before the single-thread
    # fixture applies, and sums over other thread counts round differently.
    detector, _ = _fit(splits, epochs=1)
    again, _ = _fit(splits, epochs=1)
    images, _ = _test_images(detector, splits)
    with torch.no_grad():
        scores = detector(images).pred_score
        assert torch.equal(scores, again(images).pred_score)
    # safetensors wants contiguous tensors (the backbone is channels-last), as adcore.checkpoint stores them.
    save_file({k: v.contiguous() for k, v in detector.state_dict().items()}, tmp_path / "cfa.safetensors")
    loaded = Cfa(CfaConfig(**{**TINY, "epochs": 1}))
    loaded.load_fitted_state(load_file(tmp_path / "cfa.safetensors"))
    with torch.no_grad():
        assert torch.equal(loaded(images).pred_score, scores)


def test_bf16_training_and_scoring_stay_finite(splits):
    detector = create_detector("cfa", seed=0, **{**TINY, "epochs": 1})
    engine = _engine(precision="bf16")
    engine.fit(detector, AnomalyDataset(splits.train, detector.input_spec))
    test = AnomalyDataset(splits.test, detector.input_spec, has_masks=True)
    predictions = engine.predict(detector, test)
    assert torch.isfinite(predictions.scores).all() and predictions.maps.dtype == torch.float32


def test_unfitted_and_invalid_input_raise():
    detector = Cfa(CfaConfig(**TINY))
    with pytest.raises(NotFittedError):
        detector.predict(torch.zeros(1, 3, 64, 64))
    detector.is_fitted.fill_(True)
    with pytest.raises(ValueError, match="shape"):
        detector.predict(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="NaN"):
        detector.predict(torch.full((1, 3, 64, 64), float("nan")))


def test_too_small_a_bank_for_k_plus_j_is_a_clear_error(splits):
    with pytest.raises(ValueError, match="K \\+ J"):
        _fit(splits, layers=(4,), image_size=64)  # a 2x2 grid: 4 centroids < 6
