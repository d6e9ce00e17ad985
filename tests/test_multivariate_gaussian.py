"""MultivariateGaussian: NLL and Mahalanobis distance equal torch.distributions' values."""

import pytest
import torch
from adcore.components.multivariate_gaussian import MultivariateGaussian
from torch.distributions import MultivariateNormal


def _data(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) + torch.arange(d, dtype=torch.float32)


def test_nll_matches_torch_multivariate_normal():
    train, test = _data(200, 6, 0), _data(10, 6, 1)
    gaussian = MultivariateGaussian(regularization=0.01).fit(train)
    covariance = torch.cov(train.double().T) + 0.01 * torch.eye(6, dtype=torch.float64)
    reference = MultivariateNormal(train.double().mean(dim=0), covariance)
    torch.testing.assert_close(
        gaussian.negative_log_likelihood(test).double(), -reference.log_prob(test.double()), rtol=1e-4, atol=1e-4
    )
    delta = test.double() - reference.mean
    squared = (delta @ torch.linalg.inv(covariance) * delta).sum(dim=1)
    torch.testing.assert_close(gaussian.mahalanobis(test).double(), squared.sqrt(), rtol=1e-4, atol=1e-4)


def test_regularization_keeps_a_rank_deficient_fit_finite():
    train = _data(3, 6, 2)  # fewer samples than dimensions
    with pytest.raises(ValueError, match="singular"):
        MultivariateGaussian(regularization=0.0).fit(train)
    scores = MultivariateGaussian(regularization=1e-3).fit(train).negative_log_likelihood(_data(4, 6, 3))
    assert torch.isfinite(scores).all()


def test_clear_errors():
    with pytest.raises(ValueError, match=">= 0"):
        MultivariateGaussian(regularization=-1.0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        MultivariateGaussian().fit(torch.zeros(1, 3))
    with pytest.raises(RuntimeError, match="not fitted"):
        MultivariateGaussian().mahalanobis(torch.zeros(2, 3))
