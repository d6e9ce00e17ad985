"""Exact k-nearest-neighbour search in Euclidean space, chunked so memory stays bounded.

Memory-bank methods (PatchCore, CFA, ...) compare every test patch with every bank item.
A full (Q, M) distance matrix for a 256x256 image against a 20k-item bank is fine, but for
a batch of images against a bank of millions it is not. Here queries and bank are both
processed in chunks: each step builds one (q_chunk, m_chunk) block with the matmul form
``||q||^2 - 2 q.b + ||b||^2`` and merges it into a running top-k, so peak memory depends on
the chunk sizes, never on Q * M.
"""

from __future__ import annotations

import math

import torch

# Default number of distance entries per block (float32: 4M entries = 16 MB).
DEFAULT_BLOCK_ELEMENTS = 4 * 1024 * 1024


def squared_distances(
    queries: torch.Tensor, bank: torch.Tensor, bank_sq_norms: torch.Tensor | None = None
) -> torch.Tensor:
    """Squared Euclidean distances (Q, M) via one matmul; clamped at 0 against rounding."""
    q_sq = queries.pow(2).sum(dim=1, keepdim=True)
    b_sq = bank.pow(2).sum(dim=1) if bank_sq_norms is None else bank_sq_norms
    distances = torch.addmm(q_sq + b_sq.unsqueeze(0), queries, bank.T, alpha=-2.0)
    return distances.clamp_(min=0.0)


def _chunk_sizes(num_queries: int, num_bank: int, k: int, dims: int, chunk_size: int | None) -> tuple[int, int]:
    """Query and bank chunk sizes: ``chunk_size`` bounds both sides of a block."""
    if chunk_size is not None:
        return max(1, min(chunk_size, num_queries)), max(k, min(chunk_size, num_bank))
    bank_chunk = max(k, min(num_bank, 16384))
    # Blocks: (queries x bank) distances and (queries x k x dims) for the exact recomputation.
    query_chunk = DEFAULT_BLOCK_ELEMENTS // max(bank_chunk, k * dims)
    return max(1, min(num_queries, query_chunk)), bank_chunk


def nearest_neighbors(
    queries: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest bank items of each query, exactly.

    Args:
        queries: (Q, D) float tensor.
        bank: (M, D) float tensor on the same device, M >= k.
        k: neighbours per query.
        chunk_size: largest number of queries and of bank items in one distance block
            (default: blocks of about 4M entries, 16 MB in float32).

    Returns:
        ``(distances, indices)``, both (Q, k), sorted by increasing Euclidean distance.
    """
    if queries.ndim != 2 or bank.ndim != 2:
        raise ValueError(
            f"nearest_neighbors: expected 2-D queries and bank, got {tuple(queries.shape)} and {tuple(bank.shape)}"
        )
    if queries.shape[1] != bank.shape[1]:
        raise ValueError(f"nearest_neighbors: queries have {queries.shape[1]} dims, bank has {bank.shape[1]}")
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"nearest_neighbors: k={k} must be in [1, {bank.shape[0]}] (the bank size)")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"nearest_neighbors: chunk_size must be positive, got {chunk_size}")

    # Exact means float32 at least: a bf16 autocast region must not reach these matmuls.
    with torch.autocast(device_type=queries.device.type, enabled=False):
        return _search(queries, bank, k, chunk_size)


def _search(
    queries: torch.Tensor, bank: torch.Tensor, k: int, chunk_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    num_queries, num_bank = queries.shape[0], bank.shape[0]
    dtype = torch.promote_types(queries.dtype, torch.float32)
    query_chunk, bank_chunk = _chunk_sizes(num_queries, num_bank, k, queries.shape[1], chunk_size)
    out_distances = torch.empty(num_queries, k, dtype=dtype, device=queries.device)
    out_indices = torch.empty(num_queries, k, dtype=torch.long, device=queries.device)
    bank_starts = range(0, num_bank, bank_chunk)
    bank_norms = [bank[s : s + bank_chunk].to(dtype).pow(2).sum(dim=1) for s in bank_starts]

    for q_start in range(0, num_queries, query_chunk):
        q = queries[q_start : q_start + query_chunk].to(dtype)
        best_d = torch.full((q.shape[0], k), math.inf, dtype=dtype, device=q.device)
        best_i = torch.zeros((q.shape[0], k), dtype=torch.long, device=q.device)
        for b_start, b_norm in zip(bank_starts, bank_norms):
            block = squared_distances(q, bank[b_start : b_start + bank_chunk].to(dtype), b_norm)
            kk = min(k, block.shape[1])
            block_d, block_i = block.topk(kk, dim=1, largest=False)
            # Merge the block's best with the running best; keep the k smallest.
            merged_d = torch.cat([best_d, block_d], dim=1)
            merged_i = torch.cat([best_i, block_i + b_start], dim=1)
            best_d, order = merged_d.topk(k, dim=1, largest=False, sorted=True)
            best_i = merged_i.gather(1, order)
        # The matmul form loses precision to cancellation for near neighbours far from the
        # origin (an exact match can come out as 1e-2): recompute the k winners directly.
        exact = torch.linalg.vector_norm(q.unsqueeze(1) - bank[best_i].to(dtype), dim=2)
        exact, order = exact.sort(dim=1, stable=True)
        out_distances[q_start : q_start + q.shape[0]] = exact
        out_indices[q_start : q_start + q.shape[0]] = best_i.gather(1, order)
    return out_distances, out_indices
