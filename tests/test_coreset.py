"""k-center-greedy: same selection as the naive loop, bounded memory, Sampler contract."""

import pytest
import torch
from adcore.components.coreset import (
    KCenterGreedy,
    StreamingCoreset,
    _dense_k_center_greedy,
    k_center_greedy,
    sharded_k_center_greedy,
)
from adcore.protocols import Sampler


def brute_force_greedy(points: torch.Tensor, n_select: int, seed: int) -> torch.Tensor:
    """The textbook loop: full distance update per step, same seeded start."""
    generator = torch.Generator().manual_seed(seed)
    current = int(torch.randint(points.shape[0], (1,), generator=generator))
    min_distance = torch.full((points.shape[0],), float("inf"), dtype=torch.float64)
    selected = []
    for _ in range(n_select):
        selected.append(current)
        min_distance = torch.minimum(min_distance, (points.double() - points[current].double()).norm(dim=1))
        min_distance[current] = 0.0
        current = int(min_distance.argmax())
    return torch.tensor(selected)


def _blobs(n_per_blob: int, dims: int, blobs: int, generator: torch.Generator) -> torch.Tensor:
    """Tight clusters far from the origin: where pruning matters and rounding bites."""
    centres = torch.randn(blobs, 1, dims, generator=generator) * 5.0 + 20.0
    return (centres + 0.1 * torch.randn(blobs, n_per_blob, dims, generator=generator)).reshape(-1, dims)


@pytest.mark.parametrize("num_clusters", [None, 1, 7, 60])
@pytest.mark.parametrize("kind", ["gaussian", "blobs"])
def test_selects_the_same_indices_as_brute_force(num_clusters, kind):
    generator = torch.Generator().manual_seed(1)
    points = torch.randn(1200, 16, generator=generator) if kind == "gaussian" else _blobs(300, 16, 4, generator)
    selected = k_center_greedy(points, 150, seed=5, num_clusters=num_clusters)
    assert torch.equal(selected, brute_force_greedy(points, 150, seed=5))


def test_selects_everything_distinct_then_stops_on_duplicates():
    points = torch.randn(20, 4).repeat(3, 1)  # 20 distinct points, each three times
    selected = k_center_greedy(points, 50, seed=0)
    assert len(selected) == 20
    assert len({tuple(row.tolist()) for row in points[selected]}) == 20


def test_covering_radius_beats_random_subset():
    generator = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(2000, 8, generator=generator), 10 + torch.randn(20, 8, generator=generator)])
    coreset = points[k_center_greedy(points, 50, seed=0)]
    random = points[torch.randperm(len(points), generator=generator)[:50]]
    assert torch.cdist(points, coreset).min(1).values.max() < torch.cdist(points, random).min(1).values.max()


def test_same_seed_same_selection_other_seed_other_start():
    points = torch.randn(500, 8)
    assert torch.equal(k_center_greedy(points, 40, seed=3), k_center_greedy(points, 40, seed=3))
    assert k_center_greedy(points, 40, seed=3)[0] != k_center_greedy(points, 40, seed=4)[0]


def test_input_is_not_modified():
    points = torch.randn(300, 8)
    copy = points.clone()
    k_center_greedy(points, 30, seed=0)
    assert torch.equal(points, copy)


def test_sampler_ratio_projection_and_protocol():
    features = torch.randn(1000, 300)
    sampler = KCenterGreedy(0.1, projection_dim=32, seed=0)
    assert isinstance(sampler, Sampler)
    assert sampler.project(features).shape == (1000, 32)
    indices = sampler.sample(features)
    assert indices.shape == (100,) and len(set(indices.tolist())) == 100
    # Low-dimensional rows are used as they are (projection would not save anything).
    assert KCenterGreedy(0.1, projection_dim=32).project(torch.randn(10, 16)).shape == (10, 16)


def test_never_allocates_a_points_by_points_matrix(monkeypatch):
    """Every distance block stays far below M x M."""
    from adcore.components import coreset

    largest = []
    original = coreset.nearest_neighbors

    def spy(queries, bank, k=1, chunk_size=None):
        largest.append(queries.shape[0] * bank.shape[0])
        return original(queries, bank, k, chunk_size)

    monkeypatch.setattr(coreset, "nearest_neighbors", spy)
    points = torch.randn(4000, 8)
    k_center_greedy(points, 400, seed=0)
    assert max(largest) <= 4000 * 2 * 64  # clustering against ~2 sqrt(M) centres only


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((torch.randn(10, 3), 0), {}),
        ((torch.randn(10, 3), 11), {}),
        ((torch.randn(10), 2), {}),
        ((torch.randn(10, 3), 2), {"num_clusters": 11}),
    ],
)
def test_rejects_bad_arguments(args, kwargs):
    with pytest.raises(ValueError):
        k_center_greedy(*args, **kwargs)


@pytest.mark.parametrize(("ratio", "dim"), [(0.0, 8), (1.5, 8), (0.1, 0)])
def test_sampler_rejects_bad_settings(ratio, dim):
    with pytest.raises(ValueError):
        KCenterGreedy(ratio, projection_dim=dim)


# -- sharded greedy: cost linear in the rows ------------------------------------------------------
@pytest.mark.parametrize("kind", ["gaussian", "blobs"])
def test_dense_shard_loop_is_the_greedy_rule(kind):
    generator = torch.Generator().manual_seed(2)
    points = torch.randn(900, 16, generator=generator) if kind == "gaussian" else _blobs(300, 16, 3, generator)
    start = int(brute_force_greedy(points, 1, seed=7)[0])
    assert torch.equal(_dense_k_center_greedy(points, 120, start), brute_force_greedy(points, 120, seed=7))


@pytest.mark.parametrize(("num_points", "n_select", "shard_size"), [(1000, 100, 128), (1000, 7, 300), (999, 998, 100)])
def test_sharded_selects_n_select_distinct_rows_from_every_shard(num_points, n_select, shard_size):
    points = torch.randn(num_points, 8, generator=torch.Generator().manual_seed(0))
    selected = sharded_k_center_greedy(points, n_select, seed=0, shard_size=shard_size)
    assert len(selected) == n_select == len(set(selected.tolist()))
    assert 0 <= int(selected.min()) and int(selected.max()) < num_points


def test_sharded_covers_better_than_random_and_close_to_exact():
    generator = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(4000, 8, generator=generator), 10 + torch.randn(40, 8, generator=generator)])

    def radius(index):
        return float(torch.cdist(points, points[index]).min(1).values.max())

    exact = radius(k_center_greedy(points, 200, seed=0))
    sharded = radius(sharded_k_center_greedy(points, 200, seed=0, shard_size=1024))
    random = radius(torch.randperm(len(points), generator=generator)[:200])
    assert exact <= sharded < random
    assert sharded < 1.5 * exact


def test_sharded_one_shard_is_the_exact_rule_from_its_start():
    points = torch.randn(600, 8, generator=torch.Generator().manual_seed(3))
    selected = sharded_k_center_greedy(points, 60, seed=1, shard_size=600)
    # One shard: the greedy rule itself (brute force from the same start).
    start = int(selected[0])
    assert torch.equal(selected, _dense_k_center_greedy(points, 60, start))


def test_sharded_same_seed_same_selection_other_seed_other_selection():
    points = torch.randn(2000, 8)
    first = sharded_k_center_greedy(points, 100, seed=3, shard_size=500)
    assert torch.equal(first, sharded_k_center_greedy(points, 100, seed=3, shard_size=500))
    assert not torch.equal(first, sharded_k_center_greedy(points, 100, seed=4, shard_size=500))


def test_sampler_uses_shards_when_asked():
    features = torch.randn(3000, 16)
    exact = KCenterGreedy(0.05, projection_dim=16, seed=0).sample(features)
    sharded = KCenterGreedy(0.05, projection_dim=16, seed=0, shard_size=1000).sample(features)
    assert len(exact) == len(sharded) == 150
    assert not torch.equal(torch.sort(exact).values, torch.sort(sharded).values)
    with pytest.raises(ValueError, match="shard_size"):
        KCenterGreedy(0.1, shard_size=0)


def test_streaming_coreset_in_one_block_selects_what_the_sampler_selects():
    points = torch.randn(900, 24, generator=torch.Generator().manual_seed(4))
    sampler = KCenterGreedy(0.1, projection_dim=8, seed=3, shard_size=256)
    expected = points[sampler.sample(points)]
    streaming = StreamingCoreset(sampler, block_rows=None)
    for chunk in points.split(100):
        streaming.add(chunk)
    assert torch.equal(streaming.finish(), expected)


def test_streaming_coreset_blocks_bound_the_buffer_and_cover_every_block():
    generator = torch.Generator().manual_seed(5)
    points = torch.rand(1000, 3, generator=generator)  # few dimensions: covering is what greedy selection wins
    streaming = StreamingCoreset(KCenterGreedy(0.1, projection_dim=16, seed=0, shard_size=128), block_rows=300)
    largest = 0
    for chunk in points.split(100):
        streaming.add(chunk)
        largest = max(largest, streaming._pending_rows)
    bank = streaming.finish()
    assert largest <= 300 and streaming.blocks == 0  # finish resets
    assert 95 <= bank.shape[0] <= 100  # a tenth of each block (4 blocks: 300, 300, 300, 100 rows)
    # every selected row is a training row, and the coreset covers far better than its size at random
    distances = torch.cdist(points, bank).min(dim=1).values
    assert (bank[:, None, :] == points[None]).all(dim=2).any(dim=1).all()
    random_bank = points[torch.randperm(1000, generator=generator)[: bank.shape[0]]]
    assert distances.max() < torch.cdist(points, random_bank).min(dim=1).values.max()


def test_streaming_coreset_rejects_bad_block_sizes_and_empty_fits():
    with pytest.raises(ValueError, match="block_rows"):
        StreamingCoreset(KCenterGreedy(0.1), block_rows=0)
    with pytest.raises(ValueError, match="no rows"):
        StreamingCoreset(KCenterGreedy(0.1)).finish()
