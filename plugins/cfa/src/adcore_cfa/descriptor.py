"""CFA's patch descriptor: the only trainable part of the method.

Each backbone level is averaged over a 3x3 neighbourhood (so a position describes a patch,
not a point), upsampled to the finest level and concatenated; a CoordConv (two extra
channels holding the row and column in [-1, 1]) followed by a 1x1 convolution maps the
result to the target-oriented features. The coordinates let one position's features be
told apart from another's, so patches are adapted towards centroids of their own region.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def add_coordinates(features: torch.Tensor) -> torch.Tensor:
    """Append two channels with the row and column coordinate in [-1, 1]: (N, C + 2, h, w)."""
    n, _, h, w = features.shape
    rows = torch.linspace(-1.0, 1.0, h, device=features.device, dtype=features.dtype)
    columns = torch.linspace(-1.0, 1.0, w, device=features.device, dtype=features.dtype)
    grid_rows = rows.view(1, 1, h, 1).expand(n, 1, h, w)
    grid_columns = columns.view(1, 1, 1, w).expand(n, 1, h, w)
    return torch.cat([features, grid_columns, grid_rows], dim=1)


def patch_features(levels: list[torch.Tensor]) -> torch.Tensor:
    """3x3 average per level, upsampled to the first (finest) level and concatenated."""
    size = levels[0].shape[-2:]
    parts = []
    for level in levels:
        pooled = F.avg_pool2d(level.float(), kernel_size=3, stride=1, padding=1)
        parts.append(
            pooled
            if pooled.shape[-2:] == size
            else F.interpolate(pooled, size=size, mode="bilinear", align_corners=False)
        )
    return torch.cat(parts, dim=1)


class PatchDescriptor(nn.Module):
    """Backbone levels (frozen) -> target-oriented features (N, out_channels, h, w)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.projection = nn.Conv2d(in_channels + 2, out_channels, kernel_size=1)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return self.projection(add_coordinates(patch_features(levels)))
