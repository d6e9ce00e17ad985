"""PositionalGaussian (PaDiM's density model): streaming fit, exact Mahalanobis distances."""

import numpy as np
import pytest
import torch
from adcore.components.gaussian import PositionalGaussian


def _features(n, d, p, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(d, p, generator=g) * 3
    mixing = torch.randn(d, d, generator=g) / d**0.5
    return base + torch.einsum("ij,njp->nip", mixing, torch.randn(n, d, p, generator=g))


def test_scores_are_mahalanobis_distances():
    train, test = _features(30, 5, 7, 0), _features(4, 5, 7, 1)
    gaussian = PositionalGaussian(regularization=0.01)
    gaussian.update(train[:11])  # streaming in two batches == one pass
    gaussian.update(train[11:])
    gaussian.finish()
    scores = gaussian.score(test)
    assert scores.shape == (4, 7)
    x = train.double().numpy()
    for position in range(7):
        samples = x[:, :, position]
        mean = samples.mean(axis=0)
        covariance = np.cov(samples, rowvar=False) + 0.01 * np.eye(5)
        inverse = np.linalg.inv(covariance)
        for i in range(4):
            delta = test[i, :, position].double().numpy() - mean
            expected = np.sqrt(delta @ inverse @ delta)
            assert scores[i, position].item() == pytest.approx(expected, rel=1e-4)
    assert torch.allclose(gaussian.mean, train.mean(dim=0).T, atol=1e-4)


def test_needs_two_samples_and_a_fit():
    gaussian = PositionalGaussian()
    with pytest.raises(RuntimeError, match="not fitted"):
        gaussian.score(torch.zeros(1, 3, 4))
    gaussian.update(torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="at least 2"):
        gaussian.finish()
