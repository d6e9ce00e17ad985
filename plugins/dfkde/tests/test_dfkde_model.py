"""DFKDE on synthetic 64 px textures: it separates a defect, round-trips and validates."""

import pytest
import torch
from adcore.batch import Batch
from adcore.detector import NotFittedError
from adcore_dfkde.model import Dfkde
from safetensors.torch import load_file, save_file


def _textures(n, seed, defect=False):
    g = torch.Generator().manual_seed(seed)
    images = 0.2 * torch.randn(n, 3, 64, 64, generator=g) + torch.linspace(-0.5, 0.5, 64).view(1, 1, 1, 64)
    if defect:
        images[:, :, 20:40, 20:40] = 3.0  # an obvious bright square
    return images


def _fit(detector, images):
    detector.eval()
    detector.fit_begin()
    for chunk in images.split(8):
        detector.fit_batch(Batch(image=chunk, path=[""] * len(chunk)))
    detector.fit_end()
    detector.is_fitted.fill_(True)
    return detector


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    return _fit(Dfkde(image_size=64), _textures(20, 0))  # 16 components, as by default


def test_defect_scores_above_normal_and_map_is_the_image_score(fitted):
    with torch.no_grad():
        normal, defect = fitted(_textures(4, 1)), fitted(_textures(4, 2, defect=True))
    # A defect moves the pooled features far from the training density: probability -> 1.
    assert normal.pred_score.shape == (4,) and normal.anomaly_map.shape == (4, 1, 64, 64)
    assert defect.pred_score.min() > normal.pred_score.max()
    assert ((normal.pred_score > 0) & (normal.pred_score < 1)).all()  # probabilities
    assert (defect.pred_score > 0.9).all()
    assert torch.equal(defect.anomaly_map.amin(dim=(1, 2, 3)), defect.pred_score)
    assert torch.equal(defect.anomaly_map.amax(dim=(1, 2, 3)), defect.pred_score)


def test_to_probability_is_the_logistic_of_the_log_density(fitted):
    log_density = torch.tensor([-100.0, 12.0, 60.0])
    probability = fitted.to_probability(log_density)
    assert probability[1].item() == pytest.approx(0.5)
    expected = 1 / (1 + torch.exp(0.05 * (log_density - 12)))
    torch.testing.assert_close(probability, expected)


def test_scale_uses_the_stored_training_max_length(fitted):
    train = fitted.pca.transform(fitted.features.global_vector(_textures(20, 0)))
    assert fitted.max_length.item() == pytest.approx(train.norm(dim=1).max().item(), rel=1e-5)
    assert fitted.scale(train).norm(dim=1).max().item() == pytest.approx(1.0, rel=1e-5)


def test_checkpoint_round_trip_gives_identical_scores(fitted, tmp_path):
    save_file({k: v.contiguous() for k, v in fitted.state_dict().items()}, tmp_path / "dfkde.safetensors")
    fresh = Dfkde(image_size=64).eval()
    fresh.load_fitted_state(load_file(tmp_path / "dfkde.safetensors"))
    images = _textures(3, 3, defect=True)
    with torch.no_grad():
        assert torch.equal(fresh(images).pred_score, fitted(images).pred_score)


def test_norm_scaling_and_training_point_cap():
    torch.manual_seed(0)
    detector = _fit(
        Dfkde(image_size=64, n_pca_components=3, feature_scaling_method="norm", max_training_points=10),
        _textures(12, 4),
    )
    assert detector.kde.points.shape == (10, 3)
    torch.testing.assert_close(detector.scale(torch.randn(5, 3) * 7).norm(dim=1), torch.ones(5))
    with torch.no_grad():
        assert torch.isfinite(detector(_textures(2, 5)).pred_score).all()


def test_too_few_images_for_the_components_warns_and_uses_fewer():
    with pytest.warns(UserWarning, match="using 7 instead of n_pca_components=16"):
        detector = _fit(Dfkde(image_size=64), _textures(8, 6))
    assert detector.pca.components.shape[0] == 7


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"feature_scaling_method": "minmax"}, "feature_scaling_method must be one of .scale., .norm., got .minmax."),
        ({"n_pca_components": 0}, "n_pca_components must be > 0, got 0"),
        ({"threshold_steepness": 0}, "threshold_steepness must be > 0, got 0.0"),
    ],
)
def test_config_validation(params, message):
    with pytest.raises(ValueError, match=f"^dfkde: .*{message}"):
        Dfkde.from_config_dict(params)


def test_unfitted_and_bad_input_are_rejected():
    detector = Dfkde(image_size=64)
    with pytest.raises(NotFittedError):
        detector.predict(_textures(1, 0))
    with pytest.raises(ValueError, match="shape"):
        detector.predict(torch.zeros(1, 1, 64, 64))
