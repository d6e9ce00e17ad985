"""Patch scores to an image-sized, smoothed anomaly map (an ``AnomalyMapGenerator``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adcore.components.blur import gaussian_blur


class UpsampleBlurMap:
    """Bilinear upsampling of (N, [1,] h, w) patch scores to the image size, then blur."""

    def __init__(self, sigma: float = 4.0) -> None:
        self.sigma = sigma

    def __call__(self, patch_scores: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        if patch_scores.ndim == 3:
            patch_scores = patch_scores.unsqueeze(1)
        maps = F.interpolate(patch_scores, size=tuple(image_size), mode="bilinear", align_corners=False)
        return gaussian_blur(maps, self.sigma)
