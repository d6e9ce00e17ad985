"""One multivariate Gaussian over (N, D) samples (DFM's class-conditional Gaussian, ...).

The covariance is regularised (``regularization`` added to its diagonal, so it stays
invertible with few samples), factorised by Cholesky in float64 and stored as the
whitening matrix ``W = L^-1``: the squared Mahalanobis distance is ``||W (x - mean)||^2``
and the log-determinant is ``2 sum(log diag L)``, with no explicit inverse. (For a
Gaussian per feature-map position see :mod:`adcore.components.gaussian`.)
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MultivariateGaussian(nn.Module):
    """Mean and regularised covariance of (N, D) samples; Mahalanobis distance and NLL."""

    def __init__(self, regularization: float = 1e-6) -> None:
        super().__init__()
        if regularization < 0:
            raise ValueError(f"MultivariateGaussian: regularization must be >= 0, got {regularization}")
        self.regularization = regularization
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("whitening", torch.empty(0, 0))  # L^-1 with covariance = L L^T
        self.register_buffer("log_det", torch.zeros(()))  # log det(covariance)

    @property
    def is_fitted(self) -> bool:
        return self.mean.numel() > 0

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> MultivariateGaussian:
        """Fit on samples (N, D), N >= 2."""
        if x.ndim != 2:
            raise ValueError(f"MultivariateGaussian: expected data of shape (N, D), got {tuple(x.shape)}")
        n, d = x.shape
        if n < 2:
            raise ValueError(f"MultivariateGaussian: need at least 2 samples, got {n}")
        if not torch.isfinite(x).all():
            raise ValueError("MultivariateGaussian: training data contain NaN or infinite values")
        data = x.detach().double()
        eye = torch.eye(d, dtype=torch.float64, device=data.device)
        covariance = torch.cov(data.T).reshape(d, d) + self.regularization * eye
        cholesky, info = torch.linalg.cholesky_ex(covariance)
        if info.item() != 0:
            raise ValueError("MultivariateGaussian: covariance is singular; use a positive regularization")
        self.mean = data.mean(dim=0).float()
        self.whitening = torch.linalg.solve_triangular(cholesky, eye, upper=False).float()
        self.log_det = (2.0 * torch.log(torch.diagonal(cholesky)).sum()).float()
        return self

    def _check(self, x: torch.Tensor) -> None:
        if not self.is_fitted:
            raise RuntimeError("MultivariateGaussian is not fitted: call fit first")
        if x.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"MultivariateGaussian: expected {self.mean.shape[0]} features, got {x.shape[-1]}")

    def squared_mahalanobis(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean)^T covariance^-1 (x - mean)`` for points (..., D): (...)."""
        self._check(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return ((x.float() - self.mean) @ self.whitening.T).square().sum(dim=-1)

    def mahalanobis(self, x: torch.Tensor) -> torch.Tensor:
        return self.squared_mahalanobis(x).clamp_min(0).sqrt()

    def negative_log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """``-log N(x; mean, covariance)`` for points (..., D): (...)."""
        d = self.mean.shape[0]
        return 0.5 * (self.squared_mahalanobis(x) + self.log_det + d * math.log(2 * math.pi))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.negative_log_likelihood(x)
