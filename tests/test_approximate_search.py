"""Approximate nearest neighbours: candidates from a faiss IVF index, distances always exact."""

import pytest
import torch
from adcore.components import ApproximateNearestNeighbors, nearest_neighbors

pytest.importorskip("faiss")


def _data(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    bank = torch.cat([torch.randn(1500, 16, generator=generator) + 6 * torch.randn(1, 16, generator=generator)
                      for _ in range(8)])
    queries = bank[torch.randperm(len(bank), generator=generator)[:300]] + 0.05 * torch.randn(300, 16, generator=generator)
    return bank, queries


def test_every_distance_is_the_exact_distance_to_the_returned_item():
    bank, queries = _data()
    distances, indices = ApproximateNearestNeighbors(bank, num_probes=1).search(queries, k=3)
    assert torch.allclose(distances, torch.linalg.vector_norm(queries.unsqueeze(1) - bank[indices], dim=2))
    assert torch.all(distances[:, 1:] >= distances[:, :-1])


def test_enough_probes_give_the_exact_neighbours():
    bank, queries = _data()
    index = ApproximateNearestNeighbors(bank, num_lists=16, num_probes=16)  # every cell: exhaustive
    distances, indices = index.search(queries, k=2)
    exact_distances, exact_indices = nearest_neighbors(queries, bank, k=2)
    assert torch.equal(indices, exact_indices)
    assert torch.allclose(distances, exact_distances, atol=1e-5)


def test_few_probes_still_find_nearly_all_nearest_neighbours():
    bank, queries = _data(1)
    _, indices = ApproximateNearestNeighbors(bank, num_probes=4).search(queries, k=1)
    _, exact = nearest_neighbors(queries, bank, k=1)
    assert (indices == exact).float().mean() > 0.95


def test_queries_whose_cells_hold_too_few_items_fall_back_to_the_exact_search():
    bank, queries = _data(2)
    distances, _ = ApproximateNearestNeighbors(bank[:200], num_lists=5, num_probes=1).search(queries, k=150)
    exact_distances, _ = nearest_neighbors(queries, bank[:200], k=150)
    assert torch.isfinite(distances).all()
    assert torch.allclose(distances, exact_distances, atol=1e-4)


def test_same_seed_same_index_answers():
    bank, queries = _data(3)
    first = ApproximateNearestNeighbors(bank, num_probes=2, seed=4).search(queries, k=1)[1]
    assert torch.equal(first, ApproximateNearestNeighbors(bank, num_probes=2, seed=4).search(queries, k=1)[1])


def test_bad_arguments_are_refused():
    bank, queries = _data()
    with pytest.raises(ValueError, match="bank"):
        ApproximateNearestNeighbors(torch.empty(0, 4))
    with pytest.raises(ValueError, match="queries"):
        ApproximateNearestNeighbors(bank).search(queries[:, :3])
    with pytest.raises(ValueError, match="k="):
        ApproximateNearestNeighbors(bank[:10], num_lists=1).search(queries, k=11)
