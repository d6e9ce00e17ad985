"""Chunked exact k-NN against torch.cdist, and its memory bound."""

import pytest
import torch
from adcore.components.nearest_neighbor import nearest_neighbors


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 64, 10_000])
@pytest.mark.parametrize("k", [1, 3, 9])
def test_matches_cdist(chunk_size, k):
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(203, 19, generator=generator)
    bank = torch.randn(517, 19, generator=generator)
    distances, indices = nearest_neighbors(queries, bank, k=k, chunk_size=chunk_size)
    reference = torch.cdist(queries, bank).topk(k, dim=1, largest=False)
    assert distances.shape == indices.shape == (203, k)
    torch.testing.assert_close(distances, reference.values, atol=1e-4, rtol=1e-4)
    assert torch.equal(indices, reference.indices)
    # Sorted by increasing distance.
    assert (distances[:, 1:] >= distances[:, :-1]).all()


def test_exact_match_has_zero_distance_despite_rounding():
    bank = torch.randn(100, 64) * 1000.0
    distances, indices = nearest_neighbors(bank[[5, 42]], bank, k=1, chunk_size=16)
    assert torch.equal(indices[:, 0], torch.tensor([5, 42]))
    assert (distances >= 0).all() and torch.isfinite(distances).all()


def test_float64_inputs_stay_float64():
    queries, bank = torch.randn(10, 4, dtype=torch.float64), torch.randn(30, 4, dtype=torch.float64)
    distances, _ = nearest_neighbors(queries, bank, k=2)
    assert distances.dtype == torch.float64


def test_never_builds_the_full_distance_matrix(monkeypatch):
    """Every distance block is at most chunk_size x chunk_size, whatever Q and M are."""
    import adcore.components.nearest_neighbor as nn_module

    seen = []
    original = nn_module.squared_distances

    def spy(queries, bank, norms=None):
        seen.append((queries.shape[0], bank.shape[0]))
        return original(queries, bank, norms)

    monkeypatch.setattr(nn_module, "squared_distances", spy)
    nearest_neighbors(torch.randn(1000, 8), torch.randn(3000, 8), k=4, chunk_size=128)
    assert seen and max(q for q, _ in seen) <= 128 and max(m for _, m in seen) <= 128


@pytest.mark.parametrize(
    ("queries", "bank", "k", "chunk_size"),
    [
        (torch.randn(4, 3), torch.randn(5, 4), 1, None),  # dims differ
        (torch.randn(4), torch.randn(5, 4), 1, None),  # not 2-D
        (torch.randn(4, 3), torch.randn(5, 3), 6, None),  # k > bank size
        (torch.randn(4, 3), torch.randn(5, 3), 0, None),  # k < 1
        (torch.randn(4, 3), torch.randn(5, 3), 1, 0),  # bad chunk
    ],
)
def test_rejects_bad_arguments(queries, bank, k, chunk_size):
    with pytest.raises(ValueError):
        nearest_neighbors(queries, bank, k=k, chunk_size=chunk_size)
