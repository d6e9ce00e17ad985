"""Gaussian kernel density estimation (DFKDE, ...), as ``scipy.stats.gaussian_kde`` does it.

The kernel's covariance is the data covariance scaled by Scott's factor
``n ** (-1 / (d + 4))``. The training points are stored already whitened by the kernel
covariance (``z = L^-1 x`` with ``L`` its Cholesky factor), so a density is a mean of
``exp(-||z - z_i||^2 / 2)`` times one normalising constant. Log-densities are computed
with a log-sum-exp in float64, in chunks of queries, so they stay finite far from the
data (where the density itself underflows) and memory stays bounded.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class GaussianKDE(nn.Module):
    """Gaussian KDE over (N, D) samples with Scott's bandwidth; buffers sized at fit time."""

    def __init__(self, chunk_elements: int = 4_000_000) -> None:
        super().__init__()
        self.chunk_elements = chunk_elements  # queries x training points per block
        self.register_buffer("points", torch.empty(0, 0))  # whitened training points (N, D)
        self.register_buffer("whitening", torch.empty(0, 0))  # L^-1 (D, D)
        self.register_buffer("log_norm", torch.zeros(()))  # log of the kernel's normalising constant

    @property
    def is_fitted(self) -> bool:
        return self.points.numel() > 0

    @staticmethod
    def scott_factor(n: int, d: int) -> float:
        return n ** (-1.0 / (d + 4))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> GaussianKDE:
        """Fit on samples (N, D); needs more samples than dimensions (a full-rank covariance)."""
        if x.ndim != 2:
            raise ValueError(f"GaussianKDE: expected data of shape (N, D), got {tuple(x.shape)}")
        n, d = x.shape
        if n <= d:
            raise ValueError(
                f"GaussianKDE: need more samples than dimensions for a covariance, got {n} samples of dimension {d}"
            )
        if not torch.isfinite(x).all():
            raise ValueError("GaussianKDE: training data contain NaN or infinite values")
        data = x.detach().double()
        covariance = torch.cov(data.T).reshape(d, d) * self.scott_factor(n, d) ** 2
        cholesky, info = torch.linalg.cholesky_ex(covariance)
        if info.item() != 0:
            raise ValueError("GaussianKDE: the data covariance is singular (collinear or constant features)")
        eye = torch.eye(d, dtype=torch.float64, device=data.device)
        whitening = torch.linalg.solve_triangular(cholesky, eye, upper=False)
        self.whitening = whitening.float()
        self.points = (data @ whitening.T).float()
        log_det = 2.0 * torch.log(torch.diagonal(cholesky)).sum()
        self.log_norm = (-0.5 * (d * math.log(2 * math.pi) + log_det)).float()
        return self

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the estimated density at points (M, D): (M,)."""
        if not self.is_fitted:
            raise RuntimeError("GaussianKDE is not fitted: call fit first")
        if x.ndim != 2 or x.shape[1] != self.points.shape[1]:
            raise ValueError(f"GaussianKDE: expected points of shape (M, {self.points.shape[1]}), got {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            points = self.points.double()
            queries = x.double() @ self.whitening.double().T
            chunk = max(1, self.chunk_elements // points.shape[0])
            parts = []
            for start in range(0, queries.shape[0], chunk):
                distances = torch.cdist(queries[start : start + chunk], points).square()
                parts.append(torch.logsumexp(-0.5 * distances, dim=1))
            log_mean = torch.cat(parts) - math.log(points.shape[0])
            return (log_mean + self.log_norm.double()).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Density at points (M, D); underflows to 0 far from the data (use ``log_density``)."""
        return self.log_density(x).exp()
