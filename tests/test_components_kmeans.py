"""k-means and k-means++ (core component, moved from CFA)."""

import pytest
import torch
from adcore.components import kmeans, kmeans_assign, kmeans_plus_plus


def _blobs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    return centres, (centres[:, None, :] + 0.1 * torch.randn(3, 50, 2, generator=generator)).reshape(-1, 2)


def test_kmeans_recovers_separated_clusters():
    centres, points = _blobs()
    found = kmeans(points, 3, generator=torch.Generator().manual_seed(1))
    matched = torch.cdist(centres, found).min(dim=1).values
    assert (matched < 0.1).all()
    # Each true cluster gets exactly one centre, and assignments split the points 50/50/50.
    assert torch.bincount(kmeans_assign(points, found), minlength=3).tolist() == [50, 50, 50]


def test_lloyd_step_moves_centres_to_the_means_of_their_points():
    points = torch.tensor([[0.0], [2.0], [10.0], [12.0]])
    found = kmeans(points, 2, generator=torch.Generator().manual_seed(0))
    assert sorted(found.squeeze(1).tolist()) == [1.0, 11.0]


def test_plus_plus_never_picks_a_point_twice_when_points_are_distinct():
    points = torch.arange(6, dtype=torch.float32).view(6, 1)
    centres = kmeans_plus_plus(points, 6, torch.Generator().manual_seed(3))
    assert sorted(centres.squeeze(1).tolist()) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_seeded_generator_is_reproducible_and_global_generator_is_the_default():
    _, points = _blobs(2)
    points = points + torch.randn(points.shape, generator=torch.Generator().manual_seed(5))
    a = kmeans(points, 7, generator=torch.Generator().manual_seed(11))
    b = kmeans(points, 7, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(a, b)
    torch.manual_seed(4)
    c = kmeans(points, 7)
    torch.manual_seed(4)
    d = kmeans(points, 7)
    torch.testing.assert_close(c, d)


def test_duplicates_and_bad_cluster_counts():
    points = torch.ones(5, 3)
    assert kmeans(points, 3).shape == (3, 3)  # duplicates are harmless
    with pytest.raises(ValueError, match="n_clusters"):
        kmeans(points, 6)
    with pytest.raises(ValueError, match="n_clusters"):
        kmeans(points, 0)
