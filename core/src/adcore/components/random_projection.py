"""Sparse random projection (Achlioptas 2003; Li, Hastie & Church 2006), seeded.

Projecting features to a few dozen or hundred dimensions with a random matrix keeps
pairwise Euclidean distances within a small relative error (Johnson-Lindenstrauss), so
distance-driven procedures such as k-center-greedy coreset selection can run on the
cheaper projected features. Entries of the (D, k) matrix are

    +sqrt(1 / (density * k))  with probability density / 2,
     0                        with probability 1 - density,
    -sqrt(1 / (density * k))  with probability density / 2,

with Li's "very sparse" default ``density = 1 / sqrt(D)``; the scale makes the expected
squared norm of a projected vector equal to that of the original. The matrix is drawn
from a seeded generator, so the same seed gives the same projection on every device.
"""

from __future__ import annotations

import math

import torch


def johnson_lindenstrauss_min_dim(n_samples: int, eps: float = 0.1) -> int:
    """Dimensions that keep all pairwise distances of ``n_samples`` points within ``1 +- eps``."""
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    return int(4.0 * math.log(n_samples) / (eps**2 / 2.0 - eps**3 / 3.0))


def sparse_random_matrix(
    in_features: int, n_components: int, density: float | None = None, seed: int = 0
) -> torch.Tensor:
    """The (in_features, n_components) projection matrix described in the module docstring."""
    if in_features < 1 or n_components < 1:
        raise ValueError(f"in_features and n_components must be positive, got {in_features} and {n_components}")
    density = 1.0 / math.sqrt(in_features) if density is None else float(density)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    generator = torch.Generator().manual_seed(seed)
    uniform = torch.rand(in_features, n_components, generator=generator, dtype=torch.float64)
    scale = math.sqrt(1.0 / (density * n_components))
    matrix = torch.zeros(in_features, n_components, dtype=torch.float64)
    matrix[uniform < density / 2.0] = -scale
    matrix[(uniform >= density / 2.0) & (uniform < density)] = scale
    return matrix.float()


class SparseRandomProjection:
    """``project(x)`` maps (N, D) rows to (N, n_components), chunked to bound memory.

    Stored dense: for the few hundred input dimensions of patch features a dense matmul
    is faster than sparse kernels, and the matrix is only D x k floats.
    """

    def __init__(self, in_features: int, n_components: int = 128, density: float | None = None, seed: int = 0) -> None:
        self.in_features = in_features
        self.n_components = n_components
        self.matrix = sparse_random_matrix(in_features, n_components, density, seed)

    def __call__(self, features: torch.Tensor, chunk_size: int = 65536) -> torch.Tensor:
        if features.ndim != 2 or features.shape[1] != self.in_features:
            raise ValueError(f"expected features of shape (N, {self.in_features}), got {tuple(features.shape)}")
        matrix = self.matrix.to(features.device)
        out = torch.empty(features.shape[0], self.n_components, device=features.device)
        for start in range(0, features.shape[0], chunk_size):
            torch.matmul(features[start : start + chunk_size].float(), matrix, out=out[start : start + chunk_size])
        return out
