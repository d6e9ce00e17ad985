"""Multivariate Gaussians per position, fitted in one streaming pass (PaDiM, DFM, ...).

Statistics are accumulated on data shifted by the first batch's mean, which keeps the
float32 sums accurate; the covariance is regularised, factorised by Cholesky in float64,
and stored as the whitening matrix ``W = L^-1`` so that the squared Mahalanobis
distance is ``||W (x - mean)||^2``: one batched matrix product per image batch, no
explicit inverse and no per-position Python loop.
"""

from __future__ import annotations

import torch
from torch import nn


class PositionalGaussian(nn.Module):
    """A ``DensityEstimator`` over features shaped (N, D, P): one Gaussian per position P."""

    def __init__(self, regularization: float = 0.01) -> None:
        super().__init__()
        self.regularization = regularization
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("whitening", torch.empty(0))
        self.reset()

    def reset(self) -> None:
        self._shift = self._sum = self._outer = None
        self._count = 0

    def update(self, features: torch.Tensor) -> None:
        """Accumulate a batch (N, D, P) of training features (always in float32, even under autocast).

        Features flattened from a channels-last (N, D, h, w) map are the fast case: D is innermost
        in memory, so the (P, N, D) copy moves whole rows instead of transposing every value.
        """
        with torch.autocast(device_type=features.device.type, enabled=False):
            self._accumulate(features.float().permute(2, 0, 1).contiguous())  # (P, N, D)

    def _accumulate(self, x: torch.Tensor) -> None:
        if self._shift is None:
            self._shift = x.mean(dim=1, keepdim=True)
            self._sum = torch.zeros_like(self._shift[:, 0])
            self._outer = torch.zeros(x.shape[0], x.shape[2], x.shape[2], dtype=x.dtype, device=x.device)
        x = x - self._shift
        self._sum += x.sum(dim=1)
        self._outer.baddbmm_(x.transpose(1, 2), x)
        self._count += x.shape[1]

    def combine_processes(self) -> None:
        """Multi-process fit: every process's sums become those over all processes' samples.

        Each process shifted its samples by its own first batch's mean; the sums are moved to
        process 0's shift before they are added (``x - c = (x - s) + (s - c)``, in float64),
        so the result is the one-process one up to summation order (process 0's first batch
        is the one-process first batch).
        """
        from adcore import distributed

        if distributed.world_size() == 1:
            return
        if self._shift is None:
            raise ValueError("a process of the fit saw no training samples")
        shift = distributed.broadcast_from_main(self._shift)
        delta = (self._shift - shift)[:, 0].double()  # (P, D)
        sums = self._sum.double()
        n = self._count
        outer = self._outer.double()
        outer += delta.unsqueeze(2) * sums.unsqueeze(1) + sums.unsqueeze(2) * delta.unsqueeze(1)
        outer += n * delta.unsqueeze(2) * delta.unsqueeze(1)
        self._shift = shift
        self._sum = distributed.all_sum((sums + n * delta).to(self._sum.dtype))
        self._outer = distributed.all_sum(outer.to(self._outer.dtype))
        self._count = int(distributed.all_sum(torch.tensor([n], dtype=torch.float64)).item())

    def finish(self, chunk: int = 512) -> None:
        """Turn accumulated sums into mean and whitening matrices.

        Positions are factorised ``chunk`` at a time so the float64 temporaries stay small
        (a 64x64 grid of 100-d Gaussians would otherwise need ~1 GB at once).
        """
        n = self._count
        if n < 2:
            raise ValueError(f"a Gaussian needs at least 2 training samples, got {n}")
        positions, dim = self._sum.shape
        eye = torch.eye(dim, dtype=torch.float64, device=self._sum.device)
        mean = torch.empty(positions, dim, device=self._sum.device)
        whitening = torch.empty(positions, dim, dim, device=self._sum.device)
        for start in range(0, positions, chunk):
            part = slice(start, start + chunk)
            mean_shifted = (self._sum[part] / n).double()  # (p, D)
            outer = self._outer[part].double()
            covariance = (outer - n * mean_shifted.unsqueeze(2) * mean_shifted.unsqueeze(1)) / (n - 1)
            covariance += self.regularization * eye
            cholesky = torch.linalg.cholesky(covariance)
            whitening[part] = torch.linalg.solve_triangular(cholesky, eye.expand_as(cholesky), upper=False)
            mean[part] = mean_shifted + self._shift[part, 0].double()
        self.mean, self.whitening = mean, whitening
        self.reset()

    def fit(self, features: torch.Tensor) -> None:
        self.reset()
        self.update(features)
        self.finish()

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distances (N, P) of features (N, D, P)."""
        if self.mean.numel() == 0:
            raise RuntimeError("PositionalGaussian is not fitted")
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self._mahalanobis(features)

    def _mahalanobis(self, features: torch.Tensor) -> torch.Tensor:
        # Contiguous operands keep the batched matmul on its fast path (strided ones can be 50x
        # slower). (P, N, D) is a cheap copy of channels-last features (rows of D stay whole).
        centered = features.float().permute(2, 0, 1).contiguous() - self.mean.unsqueeze(1)  # (P, N, D)
        whitened = torch.bmm(centered, self.whitening.transpose(1, 2))  # (P, N, D): W (x - mean) per row
        return whitened.square().sum(dim=2).clamp_min(0).sqrt().transpose(0, 1)  # (N, P)

    def finalize(self, chunk: int = 512) -> None:
        """Deprecated name of :meth:`finish` (streaming components use reset/update/finish)."""
        self.finish(chunk)
