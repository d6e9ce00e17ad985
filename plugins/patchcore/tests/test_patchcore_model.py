"""PatchCore on tiny synthetic images: fit, score, re-weighting, checkpoints, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from adcore.batch import Batch
from adcore.detector import NotFittedError
from adcore.plugins import create_detector
from safetensors.torch import load_file, save_file

SIZE = 64


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors on a shared machine: one thread avoids threads waiting for each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def textures(n: int, seed: int) -> torch.Tensor:
    """Smooth random textures (N, 3, SIZE, SIZE), roughly normalised."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=generator)
    return (F.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False) - 0.5) * 2.0


def with_square(images: torch.Tensor) -> torch.Tensor:
    defective = images.clone()
    defective[:, :, 20:36, 24:40] = 4.0
    return defective


def fit(detector, images: torch.Tensor):
    detector.fit_begin()
    for start in range(0, len(images), 4):
        detector.fit_batch(Batch(image=images[start : start + 4], path=[str(i) for i in range(4)]))
    detector.fit_end()
    detector.is_fitted.fill_(True)
    return detector.eval()


def make(**params):
    return create_detector("patchcore", seed=0, image_size=SIZE, **params)


@pytest.fixture(scope="module")
def fitted():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    detector = fit(create_detector("patchcore", seed=0, image_size=SIZE), textures(8, seed=0))
    torch.set_num_threads(previous)
    return detector


def test_outputs_shapes_and_finite(fitted):
    output = fitted(textures(3, seed=1))
    assert output.pred_score.shape == (3,) and output.pred_score.dtype == torch.float32
    assert output.anomaly_map.shape == (3, 1, SIZE, SIZE)
    assert torch.isfinite(output.pred_score).all() and torch.isfinite(output.anomaly_map).all()


def test_bank_is_the_coreset_fraction_of_patches(fitted):
    # 64 px at stride 8: an 8 x 8 grid, 8 images -> 512 patches; 10 % -> 51 items of 40 + 112 dims.
    assert fitted.memory_bank.shape == (51, 152)


def test_defect_scores_higher_and_is_localised(fitted):
    normal = textures(4, seed=2)
    output_normal, output_defect = fitted(normal), fitted(with_square(normal))
    assert (output_defect.pred_score > output_normal.pred_score.max()).all()
    for defect_map in output_defect.anomaly_map[:, 0]:
        row, col = divmod(int(defect_map.argmax()), SIZE)
        assert 20 - 4 <= row < 36 + 4 and 24 - 4 <= col < 40 + 4  # the map peaks on the square


def test_training_patch_scores_zero_when_bank_keeps_everything():
    images = textures(4, seed=3)
    detector = fit(make(coreset_sampling_ratio=1.0, blur_sigma=0.0), images)
    assert detector.memory_bank.shape[0] == 4 * 8 * 8
    assert detector(images).anomaly_map.abs().max() < 1e-4  # every patch is in the bank
    assert detector(textures(1, seed=30)).anomaly_map.max() > 0.1


def test_image_score_is_reweighted_max_patch_score(fitted):
    """Paper eq. 7: s = (1 - softmax(d(m_test*, N_b(m*)))[0]) * max patch distance."""
    images = with_square(textures(2, seed=4))
    output = fitted(images)
    patches = fitted._rows(fitted.embed(images)).view(2, -1, fitted.memory_bank.shape[1])
    bank = fitted.memory_bank
    distances = torch.cdist(patches, bank.unsqueeze(0).expand(2, -1, -1))
    nearest_distance, nearest = distances.min(dim=2)
    for i in range(2):
        location = int(nearest_distance[i].argmax())
        m_star = bank[nearest[i, location]]
        support = torch.cdist(m_star[None], bank)[0].topk(9, largest=False).indices
        d = torch.linalg.vector_norm(patches[i, location] - bank[support], dim=1)
        expected = (1 - torch.softmax(d, 0)[0]) * nearest_distance[i, location]
        assert output.pred_score[i].item() == pytest.approx(expected.item(), rel=1e-4)
        assert output.pred_score[i] < nearest_distance[i].max()


def test_same_seed_same_scores():
    images, queries = textures(8, seed=0), textures(2, seed=5)
    first = fit(make(), images)(queries).pred_score
    second = fit(make(), images)(queries).pred_score
    assert torch.equal(first, second)


def test_checkpoint_round_trip(fitted, tmp_path):
    path = tmp_path / "patchcore.safetensors"
    save_file({k: v.contiguous() for k, v in fitted.state_dict().items()}, str(path))
    loaded = make()
    loaded.load_fitted_state(load_file(str(path)))
    loaded.eval()
    queries = with_square(textures(2, seed=6))
    assert torch.equal(loaded(queries).pred_score, fitted(queries).pred_score)


def test_small_search_chunks_give_identical_scores(fitted):
    queries = with_square(textures(2, seed=7))
    chunked = make(search_chunk_size=5)
    chunked.load_fitted_state(fitted.state_dict())
    torch.testing.assert_close(chunked.eval()(queries).pred_score, fitted(queries).pred_score)


def test_num_neighbors_larger_than_bank_is_capped():
    detector = fit(make(coreset_sampling_ratio=0.01, num_neighbors=50), textures(4, seed=8))
    assert detector.memory_bank.shape[0] == 2
    assert torch.isfinite(detector(textures(1, seed=9)).pred_score).all()


def test_unfitted_and_bad_input_are_rejected(fitted):
    with pytest.raises(NotFittedError):
        make().predict(textures(1, seed=0))
    with pytest.raises(ValueError, match="shape"):
        fitted.predict(torch.zeros(1, 1, SIZE, SIZE))
    bad = textures(1, seed=0)
    bad[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        fitted.predict(bad)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"coreset_sampling_ratio": 0.0}, "coreset_sampling_ratio must be > 0, got 0.0"),
        ({"coreset_sampling_ratio": 1.5}, "coreset_sampling_ratio must be in \\[0, 1\\]"),
        ({"num_neighbors": 0}, "num_neighbors must be > 0, got 0"),
        ({"patch_size": 2}, "patch_size must be a positive odd number"),
        ({"projection_dim": 0}, "projection_dim must be > 0, got 0"),
        ({"blur_sigma": -1.0}, "blur_sigma must be >= 0, got -1.0"),
        ({"layers": ()}, "layers must name at least one backbone level"),
        ({"layers": (2, 2)}, "layers must be distinct"),
        ({"search_chunk_size": 0}, "search_chunk_size must be > 0, got 0"),
    ],
)
def test_config_validation(params, message):
    with pytest.raises(ValueError, match=f"^patchcore: .*{message}"):
        make(**params)


def test_sharded_coreset_and_faiss_search_score_like_the_exact_ones():
    pytest.importorskip("faiss")
    train, test = textures(12, 0), with_square(textures(4, 1))
    exact = fit(make(weights="none", coreset_sampling_ratio=0.1, coreset_shard_size=0), train)
    sharded = fit(make(weights="none", coreset_sampling_ratio=0.1, coreset_shard_size=1000), train)
    assert exact.memory_bank.shape == sharded.memory_bank.shape
    assert not torch.equal(exact.memory_bank, sharded.memory_bank)  # really another selection
    with torch.no_grad():
        reference = exact(test)
        exhaustive = make(weights="none", search="faiss", search_probes=10_000)
        exhaustive.load_fitted_state(exact.state_dict())
        approximate = exhaustive.eval()(test)
    # Probing every cell is an exhaustive candidate search: the same scores as the exact search.
    assert torch.allclose(approximate.pred_score, reference.pred_score, atol=1e-5)
    assert torch.allclose(approximate.anomaly_map, reference.anomaly_map, atol=1e-5)
