"""DFM on synthetic 64 px textures: both scores, the reconstruction-error map, checkpoints."""

import pytest
import torch
from adcore.batch import Batch
from adcore.detector import NotFittedError
from adcore_dfm.model import Dfm
from safetensors.torch import load_file, save_file


def _textures(n, seed, defect=False):
    g = torch.Generator().manual_seed(seed)
    images = 0.2 * torch.randn(n, 3, 64, 64, generator=g) + torch.linspace(-0.5, 0.5, 64).view(1, 1, 1, 64)
    if defect:
        images[:, :, 8:24, 40:56] = 3.0  # an obvious bright square, top right
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
    torch.manual_seed(0)  # layer 2 (stride 8): an 8x8 map at 64 px, pooled to 4x4
    return _fit(Dfm(image_size=64, layer=2, score_type="nll"), _textures(16, 0))


def test_fre_score_and_map_find_the_defect(fitted):
    fitted.config.score_type = "fre"
    try:
        with torch.no_grad():
            normal, defect = fitted(_textures(4, 1)), fitted(_textures(4, 2, defect=True))
    finally:
        fitted.config.score_type = "nll"
    assert normal.pred_score.shape == (4,) and defect.anomaly_map.shape == (4, 1, 64, 64)
    assert defect.pred_score.min() > normal.pred_score.max()
    # The map peaks in the defect's quadrant and the image score is the map's total error.
    top_right, bottom_left = defect.anomaly_map[..., :32, 32:].mean(), defect.anomaly_map[..., 32:, :32].mean()
    assert top_right > 3 * bottom_left
    features = fitted.embed(_textures(4, 2, defect=True)).flatten(1)
    residual = features - fitted.pca.inverse_transform(fitted.pca.transform(features))
    torch.testing.assert_close(defect.pred_score, residual.square().sum(dim=1), rtol=1e-4, atol=1e-4)


def test_nll_score_is_the_gaussian_negative_log_likelihood(fitted):
    images = _textures(3, 3, defect=True)
    with torch.no_grad():
        output = fitted(images)
        expected = fitted.gaussian.negative_log_likelihood(fitted.pca.transform(fitted.embed(images).flatten(1)))
        normal = fitted(_textures(3, 4))
    torch.testing.assert_close(output.pred_score, expected)
    assert output.pred_score.min() > normal.pred_score.max()


def test_pca_keeps_the_variance_level(fitted):
    features = fitted.embed(_textures(16, 0)).flatten(1)
    variance = torch.linalg.svdvals(features.double() - features.double().mean(dim=0)).square()
    ratio = torch.cumsum(variance, 0) / variance.sum()
    k = fitted.pca.components.shape[0]
    assert ratio[k - 1] >= 0.97 and ratio[k - 2] < 0.97


def test_checkpoint_round_trip_gives_identical_scores(fitted, tmp_path):
    save_file({k: v.contiguous() for k, v in fitted.state_dict().items()}, tmp_path / "dfm.safetensors")
    fresh = Dfm(image_size=64, layer=2, score_type="nll").eval()
    fresh.load_fitted_state(load_file(tmp_path / "dfm.safetensors"))
    images = _textures(2, 5, defect=True)
    with torch.no_grad():
        assert torch.equal(fresh(images).pred_score, fitted(images).pred_score)
        assert torch.equal(fresh(images).anomaly_map, fitted(images).anomaly_map)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"score_type": "mahalanobis"}, "score_type must be one of .fre., .nll., got .mahalanobis."),
        ({"pca_level": 1.5}, "pca_level must be a variance fraction in \\(0, 1\\) or a component count >= 1"),
        ({"pooling_kernel_size": 0}, "pooling_kernel_size must be >= 1, got 0"),
    ],
)
def test_config_validation(params, message):
    with pytest.raises(ValueError, match=f"^dfm: .*{message}"):
        Dfm.from_config_dict(params)


def test_errors():
    assert Dfm.Config(pca_level="12").pca_level == 12
    detector = Dfm(image_size=64, layer=2)
    with pytest.raises(NotFittedError):
        detector.predict(_textures(1, 0))
    with pytest.raises(ValueError, match="NaN"):
        detector.predict(torch.full((1, 3, 64, 64), float("nan")))
    with pytest.raises(ValueError, match="exceeds"):
        _fit(Dfm(image_size=64, layer=3, pooling_kernel_size=8), _textures(2, 0))
