"""Plain k-means (k-means++ seeding, Lloyd iterations) to shrink CFA's memory bank.

With ``gamma_c > 1`` the paper clusters the per-position centroids into ``M / gamma_c``
centroids. This runs in torch on the bank's device; the seeding draws from the global
torch generator, which the engine seeds, so the same seed gives the same bank.
"""

from __future__ import annotations

import torch
from adcore.components import nearest_neighbors, squared_distances


def kmeans_plus_plus(points: torch.Tensor, n_clusters: int) -> torch.Tensor:
    """Initial centres (n_clusters, D), each drawn with probability proportional to D^2."""
    first = torch.randint(points.shape[0], (1,), device=points.device)
    centres = [points[first]]
    closest = squared_distances(points, centres[0]).squeeze(1)
    for _ in range(1, n_clusters):
        if closest.sum() <= 0:  # fewer distinct points than clusters: duplicates are harmless
            index = torch.randint(points.shape[0], (1,), device=points.device)
        else:
            index = torch.multinomial(closest, 1)
        centres.append(points[index])
        closest = torch.minimum(closest, squared_distances(points, centres[-1]).squeeze(1))
    return torch.cat(centres)


def kmeans(points: torch.Tensor, n_clusters: int, max_iterations: int = 300, tolerance: float = 1e-6) -> torch.Tensor:
    """Cluster centres (n_clusters, D) of ``points`` (N, D)."""
    if not 1 <= n_clusters <= points.shape[0]:
        raise ValueError(f"kmeans: n_clusters={n_clusters} must be in [1, {points.shape[0]}]")
    points = points.float()
    centres = kmeans_plus_plus(points, n_clusters)
    for _ in range(max_iterations):
        _, assignment = nearest_neighbors(points, centres, k=1)
        assignment = assignment.squeeze(1)
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=n_clusters).unsqueeze(1)
        # An empty cluster keeps its centre rather than collapsing to the origin.
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        shift = (updated - centres).square().sum()
        centres = updated
        if shift <= tolerance * points.square().sum() / points.shape[0]:
            break
    return centres
