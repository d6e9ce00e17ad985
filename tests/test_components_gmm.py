"""GaussianMixture (EM, k-means++ initialisation) against hand-checkable cases."""

import pytest
import torch
from adcore.components import GaussianMixture
from safetensors.torch import load_file, save_file


def _two_blobs(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 2, generator=g) * torch.tensor([0.5, 1.0]) + torch.tensor([-6.0, 0.0])
    b = torch.randn(2 * n, 2, generator=g) * 0.3 + torch.tensor([6.0, 3.0])
    return torch.cat([a, b])


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_two_well_separated_blobs_are_recovered(covariance):
    gmm = GaussianMixture(2, covariance=covariance, seed=0).fit(_two_blobs())
    order = gmm.means[:, 0].argsort()
    means, weights = gmm.means[order], gmm.weights[order]
    torch.testing.assert_close(means, torch.tensor([[-6.0, 0.0], [6.0, 3.0]], dtype=means.dtype), atol=0.15, rtol=0)
    torch.testing.assert_close(weights, torch.tensor([1 / 3, 2 / 3], dtype=weights.dtype), atol=1e-3, rtol=0)
    variances = gmm.covariances[order].diagonal(dim1=1, dim2=2) if covariance == "full" else gmm.covariances[order]
    torch.testing.assert_close(
        variances, torch.tensor([[0.25, 1.0], [0.09, 0.09]], dtype=variances.dtype), atol=0.2 * 1.0, rtol=0.2
    )
    assert gmm.converged


def test_log_likelihood_matches_torch_distributions_mixture():
    gmm = GaussianMixture(3, seed=1).fit(torch.randn(200, 3, generator=torch.Generator().manual_seed(3)))
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=gmm.weights),
        torch.distributions.MultivariateNormal(gmm.means, covariance_matrix=gmm.covariances),
    )
    queries = torch.randn(50, 3, generator=torch.Generator().manual_seed(4)) * 3
    torch.testing.assert_close(
        gmm.score_samples(queries), mixture.log_prob(queries.double()).float(), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(gmm.score(queries), -gmm.score_samples(queries))


def test_single_component_is_the_sample_gaussian_and_diag_matches_independent_normals():
    points = torch.randn(500, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([2.0, 0.5]) + 1.0
    gmm = GaussianMixture(1, covariance="diag", regularization=0.0).fit(points)
    torch.testing.assert_close(gmm.means[0].float(), points.mean(0))
    torch.testing.assert_close(gmm.covariances[0].float(), points.var(0, unbiased=False), rtol=1e-4, atol=1e-6)
    normal = torch.distributions.Normal(points.mean(0), points.var(0, unbiased=False).sqrt())
    q = torch.tensor([[0.0, 0.0], [5.0, 1.0]])
    torch.testing.assert_close(gmm.score_samples(q), normal.log_prob(q).sum(1), rtol=1e-4, atol=1e-4)


def test_far_points_score_higher_than_typical_ones():
    gmm = GaussianMixture(2, seed=0).fit(_two_blobs())
    scores = gmm.score(torch.tensor([[-6.0, 0.0], [6.0, 3.0], [0.0, 20.0]]))
    assert scores[2] > scores[:2].max() + 50


def test_seeded_fits_are_reproducible_and_different_seeds_can_differ():
    points = torch.randn(400, 4, generator=torch.Generator().manual_seed(9))
    a = GaussianMixture(5, seed=7).fit(points)
    b = GaussianMixture(5, seed=7).fit(points)
    torch.testing.assert_close(a.means, b.means)
    torch.testing.assert_close(a.score(points), b.score(points))


def test_duplicate_points_stay_finite_thanks_to_regularisation():
    points = torch.cat([torch.zeros(20, 3), torch.ones(20, 3)])
    gmm = GaussianMixture(2, regularization=1e-4).fit(points)
    assert torch.isfinite(gmm.score(points)).all()


def test_state_lives_in_buffers_and_survives_safetensors(tmp_path):
    gmm = GaussianMixture(2, seed=0).fit(_two_blobs())
    save_file({k: v.contiguous() for k, v in gmm.state_dict().items()}, tmp_path / "gmm.safetensors")
    fresh = GaussianMixture(2)
    state = load_file(tmp_path / "gmm.safetensors")
    for name, value in state.items():
        fresh._buffers[name] = value
    queries = torch.randn(10, 2)
    torch.testing.assert_close(fresh.score(queries), gmm.score(queries))


def test_bad_arguments():
    with pytest.raises(ValueError, match="covariance"):
        GaussianMixture(2, covariance="tied")
    with pytest.raises(ValueError, match="n_components"):
        GaussianMixture(3).fit(torch.randn(2, 2))
    with pytest.raises(RuntimeError, match="fit"):
        GaussianMixture(2).score(torch.randn(2, 2))
