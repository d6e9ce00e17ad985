"""GaussianKDE: same densities as scipy.stats.gaussian_kde, finite log-densities far away."""

import numpy as np
import pytest
import torch
from adcore.components.kde import GaussianKDE
from scipy.stats import gaussian_kde


def _data(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) + 1.0


def test_matches_scipy_gaussian_kde():
    train, queries = _data(300, 4, 0), _data(50, 4, 1)
    kde = GaussianKDE(chunk_elements=3000).fit(train)  # several query chunks
    reference = gaussian_kde(train.double().numpy().T)  # Scott's rule is scipy's default
    np.testing.assert_allclose(
        kde.log_density(queries).double().numpy(), reference.logpdf(queries.double().numpy().T), rtol=1e-4, atol=1e-4
    )
    # Densities themselves underflow float32 far out: compare them with an absolute floor.
    np.testing.assert_allclose(
        kde(queries).double().numpy(), reference(queries.double().numpy().T), rtol=1e-3, atol=1e-30
    )


def test_log_density_is_finite_where_the_density_underflows():
    kde = GaussianKDE().fit(_data(100, 3, 2))
    far = torch.full((2, 3), 1e3)
    assert kde(far).eq(0).all()
    log_density = kde.log_density(far)
    assert torch.isfinite(log_density).all() and (log_density < -1e3).all()
    near = kde.log_density(_data(5, 3, 3))
    assert (near > log_density.max()).all()


def test_clear_errors():
    with pytest.raises(ValueError, match="more samples than dimensions"):
        GaussianKDE().fit(torch.randn(4, 4))
    with pytest.raises(ValueError, match="singular"):
        GaussianKDE().fit(torch.randn(20, 1).repeat(1, 3))
    with pytest.raises(RuntimeError, match="not fitted"):
        GaussianKDE().log_density(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="shape"):
        GaussianKDE().fit(_data(20, 2, 4)).log_density(torch.zeros(1, 3))
