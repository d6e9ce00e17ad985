"""Sparse random projection: distribution of entries, seeding, distance preservation."""

import math

import pytest
import torch
from adcore.components.random_projection import (
    SparseRandomProjection,
    johnson_lindenstrauss_min_dim,
    sparse_random_matrix,
)


def test_entries_follow_the_very_sparse_distribution():
    in_features, k = 400, 256
    matrix = sparse_random_matrix(in_features, k, seed=0)
    density = 1 / math.sqrt(in_features)
    scale = math.sqrt(1 / (density * k))
    assert len(torch.unique(matrix)) == 3  # -scale, 0, +scale
    nonzero = (matrix != 0).float().mean().item()
    assert nonzero == pytest.approx(density, rel=0.1)
    assert (matrix > 0).sum().item() == pytest.approx((matrix < 0).sum().item(), rel=0.15)
    torch.testing.assert_close(matrix.abs()[matrix != 0], torch.full(((matrix != 0).sum().item(),), scale))


def test_seeded():
    assert torch.equal(sparse_random_matrix(50, 10, seed=1), sparse_random_matrix(50, 10, seed=1))
    assert not torch.equal(sparse_random_matrix(50, 10, seed=1), sparse_random_matrix(50, 10, seed=2))


def test_preserves_pairwise_distances():
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(200, 1024, generator=generator)
    projected = SparseRandomProjection(1024, 256, seed=0)(points, chunk_size=37)
    original = torch.pdist(points)
    ratio = torch.pdist(projected) / original
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.03)
    assert ((ratio - 1).abs() < 0.3).float().mean().item() > 0.99


def test_chunking_does_not_change_the_result():
    projection = SparseRandomProjection(64, 16, seed=0)
    points = torch.randn(100, 64)
    torch.testing.assert_close(projection(points, chunk_size=7), points @ projection.matrix)


def test_jl_dimension_grows_with_samples_and_precision():
    assert johnson_lindenstrauss_min_dim(10_000, 0.5) > johnson_lindenstrauss_min_dim(100, 0.5)
    assert johnson_lindenstrauss_min_dim(1000, 0.1) > johnson_lindenstrauss_min_dim(1000, 0.5)


@pytest.mark.parametrize(("d", "k", "density"), [(0, 4, None), (4, 0, None), (4, 4, 0.0), (4, 4, 1.5)])
def test_rejects_bad_arguments(d, k, density):
    with pytest.raises(ValueError):
        sparse_random_matrix(d, k, density)


def test_rejects_wrong_feature_width():
    with pytest.raises(ValueError):
        SparseRandomProjection(8, 4)(torch.randn(3, 9))
