"""PCA: numpy-exact projections, variance-fraction selection, deterministic signs, checkpoints."""

import numpy as np
import pytest
import torch
from adcore.components.pca import PCA


def _data(n, d, seed, rank=None):
    g = torch.Generator().manual_seed(seed)
    rank = rank or d
    scales = torch.linspace(5.0, 0.5, rank)
    return (torch.randn(n, rank, generator=g) * scales) @ torch.randn(rank, d, generator=g) + torch.randn(
        d, generator=g
    )


def test_matches_numpy_svd_projection_and_reconstruction():
    x = _data(40, 8, 0)
    pca = PCA(3).fit(x)
    data = x.double().numpy()
    mean = data.mean(axis=0)
    _, s, vh = np.linalg.svd(data - mean, full_matrices=False)
    reference = vh[:3]
    # Components agree with numpy up to the sign SVD leaves free.
    signs = np.sign((pca.components.double().numpy() * reference).sum(axis=1))
    np.testing.assert_allclose(pca.components.double().numpy(), reference * signs[:, None], atol=1e-5)
    np.testing.assert_allclose(pca.explained_variance.numpy(), (s[:3] ** 2) / 39, rtol=1e-5)
    z = pca.transform(x)
    np.testing.assert_allclose(z.double().numpy(), (data - mean) @ (reference * signs[:, None]).T, atol=1e-3)
    expected = (data - mean) @ reference.T @ reference + mean
    np.testing.assert_allclose(pca.inverse_transform(z).double().numpy(), expected, atol=1e-3)


def test_full_rank_reconstruction_is_exact_and_low_rank_loses_the_rest():
    x = _data(30, 6, 1)
    assert torch.allclose(PCA(6).fit(x).inverse_transform(PCA(6).fit(x).transform(x)), x, atol=1e-4)
    partial = PCA(2).fit(x)
    error = (partial.inverse_transform(partial.transform(x)) - x).square().sum(dim=1).mean()
    assert error > 0.1


def test_variance_fraction_keeps_the_fewest_components_reaching_it():
    x = _data(200, 10, 2, rank=3)  # three directions carry all variance
    assert PCA(0.999).fit(x).components.shape == (3, 10)
    variance = PCA(3).fit(x).explained_variance
    ratio = torch.cumsum(variance, 0) / variance.sum()
    k = PCA(0.8).fit(x).components.shape[0]
    assert ratio[k - 1] >= 0.8 and (k == 1 or ratio[k - 2] < 0.8)


def test_signs_are_fixed_so_fits_are_deterministic():
    x = _data(25, 5, 3)
    a, b = PCA(4).fit(x), PCA(4).fit(-x + 2 * x.mean(dim=0))  # mirrored data: SVD may flip signs
    rows = a.components.abs().argmax(dim=1)
    assert (a.components.gather(1, rows[:, None]) > 0).all()
    assert torch.allclose(a.components, b.components, atol=1e-5)


def test_state_dict_round_trip_into_a_fresh_module():
    x = _data(20, 5, 4)
    fitted = PCA(0.9).fit(x)
    fresh = PCA(0.9)
    for name, value in fitted.state_dict().items():
        setattr(fresh, name, value.clone())
    assert torch.equal(fresh.transform(x), fitted.transform(x))


def test_clear_errors():
    with pytest.raises(ValueError, match="fraction"):
        PCA(1.5)
    with pytest.raises(ValueError, match=">= 1"):
        PCA(0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        PCA(1).fit(torch.randn(1, 4))
    with pytest.raises(ValueError, match="n_components=5"):
        PCA(5).fit(torch.randn(3, 8))
    with pytest.raises(RuntimeError, match="not fitted"):
        PCA(2).transform(torch.randn(3, 4))


def test_wide_data_match_numpy_and_rank_is_respected():
    x = _data(12, 30, 5)  # N < D: the Gram-matrix path; centred rank 11
    pca = PCA(5).fit(x)
    data = x.double().numpy()
    _, s, vh = np.linalg.svd(data - data.mean(axis=0), full_matrices=False)
    signs = np.sign((pca.components.double().numpy() * vh[:5]).sum(axis=1))
    np.testing.assert_allclose(pca.components.double().numpy(), vh[:5] * signs[:, None], atol=1e-5)
    np.testing.assert_allclose(pca.explained_variance.numpy(), s[:5] ** 2 / 11, rtol=1e-5)
    assert PCA(0.9999).fit(x).components.shape[0] == 11
    with pytest.raises(ValueError, match="rank 11"):
        PCA(12).fit(x)
    with pytest.raises(ValueError, match="no variance"):
        PCA(0.5).fit(torch.ones(5, 3))
