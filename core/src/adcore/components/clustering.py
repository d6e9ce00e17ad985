"""k-means clustering in torch: k-means++ seeding, then Lloyd iterations.

Used to shrink memory banks (CFA's ``gamma_c``, AI-VAD's per-video kNN banks) and to
initialise :class:`adcore.components.GaussianMixture`. It runs on the points' device.

Every random draw takes ``generator`` (a :class:`torch.Generator`); without one it draws
from torch's global generator, which the Engine seeds, so the same seed gives the same
centres either way.
"""

from __future__ import annotations

import torch

from adcore.components.nearest_neighbor import nearest_neighbors, squared_distances


def kmeans_plus_plus(points: torch.Tensor, n_clusters: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Initial centres (n_clusters, D): the first uniformly, each next with probability proportional to D^2.

    D is a point's squared distance to the closest centre chosen so far (Arthur and
    Vassilvitskii, 2007), so centres spread over the data instead of piling up in one blob.
    """
    if not 1 <= n_clusters <= points.shape[0]:
        raise ValueError(f"kmeans_plus_plus: n_clusters={n_clusters} must be in [1, {points.shape[0]}]")
    first = torch.randint(points.shape[0], (1,), device=points.device, generator=generator)
    centres = [points[first]]
    closest = squared_distances(points, centres[0]).squeeze(1)
    for _ in range(1, n_clusters):
        if closest.sum() <= 0:  # fewer distinct points than clusters: duplicates are harmless
            index = torch.randint(points.shape[0], (1,), device=points.device, generator=generator)
        else:
            index = torch.multinomial(closest, 1, generator=generator)
        centres.append(points[index])
        closest = torch.minimum(closest, squared_distances(points, centres[-1]).squeeze(1))
    return torch.cat(centres)


def kmeans_assign(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index (N,) of the closest centre of each point."""
    return nearest_neighbors(points, centres, k=1)[1].squeeze(1)


def kmeans(
    points: torch.Tensor,
    n_clusters: int,
    max_iterations: int = 300,
    tolerance: float = 1e-6,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Cluster centres (n_clusters, D) of ``points`` (N, D).

    Lloyd's algorithm from k-means++ centres: assign every point to its closest centre,
    move each centre to the mean of its points, stop after ``max_iterations`` or once the
    centres move less (in total squared distance) than ``tolerance`` times the data's mean
    squared norm. A cluster that loses all its points keeps its centre.
    """
    if not 1 <= n_clusters <= points.shape[0]:
        raise ValueError(f"kmeans: n_clusters={n_clusters} must be in [1, {points.shape[0]}]")
    points = points.float()
    centres = kmeans_plus_plus(points, n_clusters, generator)
    scale = points.square().sum() / points.shape[0]
    for _ in range(max_iterations):
        assignment = kmeans_assign(points, centres)
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=n_clusters).unsqueeze(1)
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        shift = (updated - centres).square().sum()
        centres = updated
        if shift <= tolerance * scale:
            break
    return centres
