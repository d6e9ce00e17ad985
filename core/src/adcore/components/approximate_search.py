"""Nearest neighbours in large banks: a faiss inverted-file index proposes, exact distances decide.

An exact search compares every query with every bank item: for PatchCore's bank of a few
hundred images that is fine (tens of MFLOP per image), for a bank of millions of patches it
is seconds per image. An inverted-file (IVF) index partitions the bank into ``num_lists``
k-means cells once; a query visits only its ``num_probes`` nearest cells. The index here
only *proposes* ``num_candidates`` items per query; their distances are then recomputed
exactly in float32 from the bank itself, so a returned distance is always a true distance
to a true bank item, and the result equals the exact search whenever the true neighbours
are among the candidates (the deviation is measured in docs/benchmarks.md).

faiss (``pip install faiss-cpu``, or ``faiss-gpu``) is optional: it is imported when an
index is built, with a one-line error naming the package when it is missing.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from adcore.components.nearest_neighbor import nearest_neighbors


def _faiss():
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "approximate nearest-neighbour search needs faiss: pip install faiss-cpu (or faiss-gpu)"
        ) from error
    return faiss


class ApproximateNearestNeighbors:
    """An IVF index over ``bank`` (M, D) with exact re-ranking of its candidates.

    Args:
        bank: the items to search, (M, D) float.
        num_candidates: items proposed per query before exact re-ranking (>= k at search).
        num_lists: k-means cells (default ``4 * sqrt(M)``, at most M / 39 so each cell
            trains on enough points).
        num_probes: cells visited per query; more is slower and closer to exact.
        seed: seeds the k-means that builds the cells (same seed, same index).
    """

    def __init__(
        self,
        bank: torch.Tensor,
        num_candidates: int = 16,
        num_lists: int | None = None,
        num_probes: int = 8,
        seed: int = 0,
    ) -> None:
        if bank.ndim != 2 or bank.shape[0] < 1:
            raise ValueError(f"ApproximateNearestNeighbors: expected a non-empty (M, D) bank, got {tuple(bank.shape)}")
        if num_candidates < 1 or num_probes < 1:
            raise ValueError("ApproximateNearestNeighbors: num_candidates and num_probes must be positive")
        faiss = _faiss()
        self.bank = bank.float().contiguous()
        self.num_candidates = num_candidates
        num_points, dims = self.bank.shape
        default_lists = max(1, min(int(4 * math.sqrt(num_points)), num_points // 39))
        self.num_lists = num_lists or default_lists
        if not 1 <= self.num_lists <= num_points:
            raise ValueError(f"ApproximateNearestNeighbors: num_lists={self.num_lists} must be in [1, {num_points}]")
        vectors = np.ascontiguousarray(self.bank.cpu().numpy())
        quantizer = faiss.IndexFlatL2(dims)
        self.index = faiss.IndexIVFFlat(quantizer, dims, self.num_lists, faiss.METRIC_L2)
        self.index.cp.seed = seed
        self.index.train(vectors)
        self.index.add(vectors)
        self.index.nprobe = min(num_probes, self.num_lists)
        self._quantizer = quantizer  # the index refers to it; keep it alive

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``(distances, indices)``, both (Q, k), sorted by increasing exact Euclidean distance."""
        if queries.ndim != 2 or queries.shape[1] != self.bank.shape[1]:
            raise ValueError(
                f"ApproximateNearestNeighbors: expected (Q, {self.bank.shape[1]}) queries, got {tuple(queries.shape)}"
            )
        if not 1 <= k <= self.bank.shape[0]:
            raise ValueError(f"ApproximateNearestNeighbors: k={k} must be in [1, {self.bank.shape[0]}]")
        device = queries.device
        queries = queries.detach().float()
        candidates_per_query = max(k, self.num_candidates)
        _, candidates = self.index.search(np.ascontiguousarray(queries.cpu().numpy()), candidates_per_query)
        candidates = torch.from_numpy(candidates).to(device)
        # faiss pads with -1 when the probed cells hold fewer items than asked: point those
        # slots at item 0 and give them an infinite distance so they can never win.
        missing = candidates < 0
        bank = self.bank.to(device)
        exact = torch.linalg.vector_norm(queries.unsqueeze(1) - bank[candidates.clamp(min=0)], dim=2)
        exact = exact.masked_fill(missing, math.inf)
        distances, order = exact.topk(k, dim=1, largest=False, sorted=True)
        indices = candidates.gather(1, order)
        short = torch.isinf(distances).any(dim=1)
        if short.any():  # fewer than k items in the probed cells: search those queries exactly
            distances[short], indices[short] = nearest_neighbors(queries[short], bank, k=k)
        return distances, indices
