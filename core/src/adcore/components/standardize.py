"""Standardisation of features by statistics measured on the training set.

Flows converge faster and localise better when their inputs start at the data's scale:
a fixed (or initial) affine layer set from the training features, like Glow's
data-dependent ActNorm initialisation. Two granularities are in use:

- per channel, statistics shared over all positions (CFlow's per-vector decoders);
- per channel *and position* (FastFlow, U-Flow): their convolutional flows are
  translation-equivariant, so without it they cannot tell that a feature normal at the
  image border is abnormal at its centre; on aligned objects (most inspection images)
  the per-position statistics carry much of the anomaly signal.

Statistics are accumulated over one pass (sums in float64) and frozen by :meth:`finish`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class FeatureStandardizer(nn.Module):
    """(x - mean) / std over the leading (sample) dimension, for samples of shape ``shape``.

    ``shape=(C,)`` standardises feature vectors (M, C) per channel; ``shape=(C, H, W)``
    standardises feature maps (N, C, H, W) per channel and position. ``relative_floor``
    keeps near-constant entries (e.g. a channel that is always 0 in one corner) from being
    divided by almost nothing: each std is at least that fraction of the mean std.
    """

    def __init__(self, shape: Sequence[int], relative_floor: float = 0.0, name: str = "standardizer") -> None:
        super().__init__()
        if relative_floor < 0:
            raise ValueError(f"relative_floor must be non-negative, got {relative_floor}")
        self.relative_floor = relative_floor
        self.name = name
        self.register_buffer("mean", torch.zeros(tuple(shape)))
        self.register_buffer("std", torch.ones(tuple(shape)))
        self._sum: torch.Tensor | None = None
        self._squares: torch.Tensor | None = None
        self._count = 0

    def update(self, samples: torch.Tensor) -> None:
        """Add a batch of samples (M, *shape) to the running sums."""
        if tuple(samples.shape[1:]) != tuple(self.mean.shape):
            raise ValueError(
                f"{self.name}: samples of shape {tuple(samples.shape[1:])} do not match {tuple(self.mean.shape)}"
            )
        samples = samples.detach().double()
        sums, squares = samples.sum(dim=0), samples.square().sum(dim=0)
        self._sum = sums if self._sum is None else self._sum + sums
        self._squares = squares if self._squares is None else self._squares + squares
        self._count += samples.shape[0]

    def finish(self) -> None:
        """Freeze mean and std from the accumulated samples."""
        if not self._count:
            raise ValueError(f"{self.name}: no training features to measure: is the training set empty?")
        mean = self._sum / self._count
        std = (self._squares / self._count - mean.square()).clamp_min(0).sqrt()
        floor = max(1e-6, self.relative_floor * std.mean().item())  # constant entries: no division by 0
        self.mean.copy_(mean.float())
        self.std.copy_(std.clamp_min(floor).float())
        self._sum = self._squares = None
        self._count = 0

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        return (samples.float() - self.mean) / self.std

    def accumulate(self, samples: torch.Tensor) -> None:
        """Deprecated name of :meth:`update` (streaming components use reset/update/finish)."""
        self.update(samples)
