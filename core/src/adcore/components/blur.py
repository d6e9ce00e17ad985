"""Gaussian smoothing of anomaly maps (kornia), as most papers apply to patch-score maps."""

from __future__ import annotations

import kornia.filters
import torch


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur (N, 1, H, W) maps with an isotropic Gaussian; kernel covers +-4 sigma."""
    if sigma <= 0:
        return maps
    size = 2 * int(4.0 * sigma + 0.5) + 1
    # Scores are compared across images: keep them in float32 even under bf16 autocast.
    with torch.autocast(device_type=maps.device.type, enabled=False):
        return kornia.filters.gaussian_blur2d(maps.float(), (size, size), (sigma, sigma), border_type="reflect")
