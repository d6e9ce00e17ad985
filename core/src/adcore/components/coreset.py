"""K-center-greedy coreset selection (Sener & Savarese 2018), as PatchCore uses it.

The greedy rule: start from one (seeded random) point; repeatedly add the point whose
distance to the nearest already-selected point is largest. A naive implementation keeps
the (M,) vector of those minimum distances and updates it with one distance pass over
all M points per selected point: O(M * K * d) memory traffic, which for a 200k-patch
bank and a 10 % coreset is minutes of CPU time (and implementations that build an
M x M matrix run out of memory).

This one gives the same selection, faster, with memory fixed before the loop starts:

* Points are grouped once into ``num_clusters`` clusters (a few Lloyd iterations, using
  the chunked nearest-neighbour search) and stored cluster by cluster. Each cluster keeps
  its centre, its radius and the largest minimum distance of its points.
* When a point ``s`` is selected, the triangle inequality
  ``d(s, x) >= d(s, centre) - d(x, centre)`` proves for most clusters, and then for most
  points of the remaining clusters, that ``s`` is not closer than their current nearest
  selected point, so their minimum distance cannot change. Only the other points get a
  (vectorised) distance update. Skipping an update that cannot change anything keeps the
  result identical to the naive loop.
* The next point is the argmax over cluster maxima, then within the winning cluster.

No step allocates more than O(M) memory; the buffers are allocated once.
"""

from __future__ import annotations

import math

import torch

from adcore.components.nearest_neighbor import nearest_neighbors
from adcore.components.random_projection import SparseRandomProjection

# Relative slack on the triangle bound, so float rounding can never prune a real update.
_BOUND_SLACK = 1e-5


def _distances_to(points: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """Euclidean distances of each row of ``points`` to ``point``.

    Computed from differences, not the matmul form: near-duplicate patches far from the
    origin would otherwise lose all precision to cancellation and change the selection.
    """
    return torch.linalg.vector_norm(points - point, dim=1)


def _cluster(points: torch.Tensor, num_clusters: int, iterations: int, generator: torch.Generator):
    """Lloyd's k-means from a seeded random start; returns (centres, assignment, distance)."""
    centres = points[torch.randperm(points.shape[0], generator=generator)[:num_clusters]].clone()
    for _ in range(iterations):
        _, assignment = nearest_neighbors(points, centres, k=1)
        assignment = assignment[:, 0]
        counts = torch.bincount(assignment, minlength=num_clusters)
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled].unsqueeze(1).to(points.dtype)
    _, assignment = nearest_neighbors(points, centres, k=1)
    assignment = assignment[:, 0]
    distance = torch.empty(points.shape[0], dtype=points.dtype, device=points.device)
    for start in range(0, points.shape[0], 65536):  # exact distances, chunked
        rows = slice(start, start + 65536)
        distance[rows] = torch.linalg.vector_norm(points[rows] - centres[assignment[rows]], dim=1)
    return centres, assignment, distance


def k_center_greedy(
    points: torch.Tensor,
    n_select: int,
    seed: int = 0,
    num_clusters: int | None = None,
    kmeans_iterations: int = 2,
) -> torch.Tensor:
    """Indices (<= n_select,) of the k-center-greedy coreset of ``points`` (M, d).

    The first point is drawn with ``seed``. Fewer than ``n_select`` indices come back only
    when every remaining point duplicates a selected one (all minimum distances are 0).
    ``num_clusters`` (default about sqrt(M) * 2) only changes speed, never the result.
    """
    if points.ndim != 2:
        raise ValueError(f"k_center_greedy: expected (M, d) points, got {tuple(points.shape)}")
    num_points = points.shape[0]
    if not 1 <= n_select <= num_points:
        raise ValueError(f"k_center_greedy: n_select={n_select} must be in [1, {num_points}]")
    generator = torch.Generator().manual_seed(seed)
    start = int(torch.randint(num_points, (1,), generator=generator))
    points = points.float()
    device = points.device
    num_clusters = num_clusters or max(1, min(num_points, 2 * math.isqrt(num_points)))
    if not 1 <= num_clusters <= num_points:
        raise ValueError(f"k_center_greedy: num_clusters={num_clusters} must be in [1, {num_points}]")

    # Cluster once, then store points cluster by cluster so a cluster is one slice.
    centres, assignment, to_centre = _cluster(points, num_clusters, kmeans_iterations, generator)
    order = torch.argsort(assignment, stable=True)
    position = torch.empty_like(order)
    position[order] = torch.arange(num_points, device=device)
    points = points[order]  # the caller's tensor stays untouched; this is the one copy
    cluster_of = assignment[order]
    to_centre = to_centre[order]
    counts = torch.bincount(cluster_of, minlength=num_clusters)
    starts = torch.cumsum(counts, 0) - counts
    radius = torch.full((num_clusters,), -math.inf, device=device).scatter_reduce_(0, cluster_of, to_centre, "amax")
    arange = torch.arange(num_points, device=device)

    # Preallocated state: minimum distance per point, its maximum per cluster, the result.
    min_distance = torch.full((num_points,), math.inf, device=device)
    cluster_max = torch.full((num_clusters,), math.inf, device=device)
    cluster_max[counts == 0] = -math.inf  # k-means can leave clusters empty (duplicate points)
    selected = torch.empty(n_select, dtype=torch.long, device=device)

    # The loop's steps touch a few thousand rows each: on a busy CPU, waking a second
    # thread for them costs more than it saves (threads wait on each other), so run it on one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        current = int(position[start])
        for step in range(n_select):
            selected[step] = current
            point = points[current]
            # 1. Clusters that may contain a point closer to `point` than its current nearest.
            to_centres = _distances_to(centres, point)
            active = torch.nonzero((to_centres - radius) * (1 - _BOUND_SLACK) < cluster_max).squeeze(1)
            sizes = counts[active]
            offsets = torch.cumsum(sizes, 0) - sizes
            candidates = arange[: int(sizes.sum())] + torch.repeat_interleave(starts[active] - offsets, sizes)
            # 2. Within them, the points whose triangle bound does not rule an update out.
            bound = to_centres[cluster_of[candidates]] - to_centre[candidates]
            current_min = min_distance[candidates]
            update = torch.nonzero(bound * (1 - _BOUND_SLACK) < current_min).squeeze(1)
            rows = candidates[update]
            current_min[update] = torch.minimum(current_min[update], _distances_to(points[rows], point))
            min_distance[candidates] = current_min
            min_distance[current] = 0.0
            # 3. Refresh the maxima of the touched clusters; pick the farthest point.
            cluster_max.index_fill_(0, active, -math.inf)
            cluster_max.scatter_reduce_(0, cluster_of[candidates], min_distance[candidates], "amax")
            best_cluster = int(cluster_max.argmax())
            if float(cluster_max[best_cluster]) <= 0.0:  # all remaining points are duplicates
                selected = selected[: step + 1]
                break
            first = int(starts[best_cluster])
            current = first + int(min_distance[first : first + int(counts[best_cluster])].argmax())
    finally:
        torch.set_num_threads(threads)
    return order[selected]


def _dense_k_center_greedy(points: torch.Tensor, n_select: int, start: int) -> torch.Tensor:
    """The plain greedy loop on one shard: one matrix-vector product per selected point.

    Squared distances come from ``|x|^2 - 2 x.p + |p|^2`` on centred points (centring keeps
    the cancellation error at float rounding of the shard's spread, far below the distances
    the greedy rule compares). Each step reads the shard once, so a shard of a few MB costs
    the same per step whatever the data looks like.
    """
    centred = points - points.mean(dim=0)
    squared_norms = centred.square().sum(dim=1)
    min_distance = torch.full_like(squared_norms, math.inf)
    selected = torch.empty(n_select, dtype=torch.long, device=points.device)
    current = start
    for step in range(n_select):
        selected[step] = current
        distance = torch.addmv(squared_norms, centred, centred[current], alpha=-2.0).add_(squared_norms[current])
        torch.minimum(min_distance, distance.clamp_(min=0.0), out=min_distance)
        min_distance[current] = 0.0
        current = int(min_distance.argmax())
        if float(min_distance[current]) <= 0.0:  # all remaining points duplicate a selected one
            return selected[: step + 1]
    return selected


def sharded_k_center_greedy(
    points: torch.Tensor, n_select: int, seed: int = 0, shard_size: int = 16384
) -> torch.Tensor:
    """Indices (about n_select,) of a k-center-greedy coreset whose cost is linear in the rows.

    The exact greedy rule costs O(M * n_select) distance evaluations, and pruning by the
    triangle inequality (:func:`k_center_greedy`) only helps when the points form
    well-separated clusters: on KolektorSDD's patches it did not finish in 15 minutes.
    Here the rows are dealt at random (seeded) into shards of at most ``shard_size`` rows and
    each shard gets its own greedy coreset, sized in proportion to the shard, so the cost is
    O(M * shard_size * n_select / M) = O(n_select * shard_size): predictable from the data's
    size alone. Every row still lies in a shard whose coreset covers it; the price is a
    somewhat larger covering radius than the exact greedy's (measured in docs/benchmarks.md).
    """
    if points.ndim != 2:
        raise ValueError(f"sharded_k_center_greedy: expected (M, d) points, got {tuple(points.shape)}")
    num_points = points.shape[0]
    if not 1 <= n_select <= num_points:
        raise ValueError(f"sharded_k_center_greedy: n_select={n_select} must be in [1, {num_points}]")
    if shard_size < 1:
        raise ValueError(f"sharded_k_center_greedy: shard_size must be positive, got {shard_size}")
    generator = torch.Generator().manual_seed(seed)
    num_shards = math.ceil(num_points / shard_size)
    order = torch.randperm(num_points, generator=generator).to(points.device)
    shards = torch.tensor_split(order, num_shards)
    # Largest-remainder apportionment: shard sizes in proportion, summing to n_select.
    quotas = [n_select * len(shard) / num_points for shard in shards]
    counts = [max(1, int(q)) for q in quotas]
    by_remainder = sorted(range(num_shards), key=lambda i: quotas[i] - int(quotas[i]), reverse=True)
    for i in by_remainder[: max(0, n_select - sum(counts))]:
        counts[i] += 1
    selected = []
    for shard, count in zip(shards, counts):
        start = int(torch.randint(len(shard), (1,), generator=generator))
        chosen = _dense_k_center_greedy(points[shard].float(), min(count, len(shard)), start)
        selected.append(shard[chosen])
    return torch.cat(selected)


class KCenterGreedy:
    """A :class:`adcore.protocols.Sampler`: the coreset of a ``sampling_ratio`` of the rows.

    Distances are taken on a sparse random projection to ``projection_dim`` dimensions
    (PatchCore's speed-up; distances are preserved up to a small relative error). Rows with
    at most ``projection_dim`` dimensions are used as they are: projecting them would not
    make anything cheaper. ``shard_size``: None runs the exact greedy rule (fast only on
    well-clustered data); a number runs :func:`sharded_k_center_greedy`, whose time is
    linear in the rows whatever the data.
    """

    def __init__(
        self, sampling_ratio: float, projection_dim: int = 128, seed: int = 0, shard_size: int | None = None
    ) -> None:
        if not 0.0 < sampling_ratio <= 1.0:
            raise ValueError(f"sampling_ratio must be in (0, 1], got {sampling_ratio}")
        if projection_dim < 1:
            raise ValueError(f"projection_dim must be positive, got {projection_dim}")
        if shard_size is not None and shard_size < 1:
            raise ValueError(f"shard_size must be positive or None, got {shard_size}")
        self.sampling_ratio = sampling_ratio
        self.projection_dim = projection_dim
        self.seed = seed
        self.shard_size = shard_size

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """The features the greedy search measures distances on (chunked projection)."""
        if features.shape[1] <= self.projection_dim:
            return features.float()
        return SparseRandomProjection(features.shape[1], self.projection_dim, seed=self.seed)(features)

    def n_select(self, num_rows: int) -> int:
        return max(1, int(num_rows * self.sampling_ratio))

    def sample(self, features: torch.Tensor, projected: torch.Tensor | None = None) -> torch.Tensor:
        """Indices of the selected rows; ``projected`` may be given if already computed."""
        projected = self.project(features) if projected is None else projected
        n_select = self.n_select(projected.shape[0])
        if self.shard_size is None:
            return k_center_greedy(projected, n_select, seed=self.seed)
        return sharded_k_center_greedy(projected, n_select, seed=self.seed, shard_size=self.shard_size)


class StreamingCoreset:
    """A coreset selected block by block while the rows arrive: memory bounded by one block plus the coreset.

    Rows are buffered until the next batch would take the buffer past ``block_rows``; that
    block then gets its own coreset from ``sampler`` (block ``i`` with seed ``seed + i``) and
    only the selected rows are kept. A fit whose rows fit in one block selects exactly what
    ``sampler.sample`` selects on all rows; a larger one is the two-level selection of
    :func:`sharded_k_center_greedy` applied per block, so fitting 20,000 images needs the
    memory of one block and of the coreset, never of all their patches.
    ``block_rows=None``: one block, whatever the size.
    """

    def __init__(self, sampler: KCenterGreedy, block_rows: int | None = None) -> None:
        if block_rows is not None and block_rows < 1:
            raise ValueError(f"block_rows must be positive or None, got {block_rows}")
        self.sampler = sampler
        self.block_rows = block_rows
        self.reset()

    def reset(self) -> None:
        self._pending: list[torch.Tensor] = []
        self._pending_rows = 0
        self._selected: list[torch.Tensor] = []
        self._blocks = 0

    @property
    def empty(self) -> bool:
        """No row has been added since the last reset."""
        return not self._pending and not self._selected

    @property
    def blocks(self) -> int:
        """Blocks selected so far."""
        return self._blocks

    def add(self, rows: torch.Tensor) -> None:
        """Buffer ``rows`` (M, D); select the buffered block first if they would overflow it."""
        if self.block_rows is not None and self._pending and self._pending_rows + rows.shape[0] > self.block_rows:
            self._select_pending()
        self._pending.append(rows)
        self._pending_rows += rows.shape[0]

    def _select_pending(self) -> None:
        block = torch.cat(self._pending)
        self._pending, self._pending_rows = [], 0
        sampler = self.sampler
        if self._blocks:
            sampler = KCenterGreedy(
                sampler.sampling_ratio, sampler.projection_dim, sampler.seed + self._blocks, sampler.shard_size
            )
        with torch.autocast(device_type=block.device.type, enabled=False):
            self._selected.append(block[sampler.sample(block)].contiguous())
        self._blocks += 1

    def gather(self, combine) -> None:
        """Multi-process fit: ``combine`` (e.g. :func:`adcore.distributed.gather_rows`) merges
        every process's selected and buffered rows, in rank order."""
        template = (self._selected or self._pending)[0]
        empty = template.new_empty(0, template.shape[1])
        # Both calls happen in every process (they are collectives), with or without rows.
        selected = combine([torch.cat(self._selected) if self._selected else empty])
        pending = combine([torch.cat(self._pending) if self._pending else empty])
        self._selected = [selected] if selected.shape[0] else []
        self._pending = [pending] if pending.shape[0] else []
        self._pending_rows = pending.shape[0]

    def finish(self) -> torch.Tensor:
        """The coreset rows (selected blocks, then the last one)."""
        if self._pending:
            self._select_pending()
        if not self._selected:
            raise ValueError("the coreset saw no rows")
        bank = torch.cat(self._selected)
        self.reset()
        return bank
