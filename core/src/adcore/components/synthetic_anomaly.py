"""Synthetic anomalies for training and validation without real defects (the DRAEM recipe).

1. A mask: 2-D Perlin noise at a random scale (a power of two per axis), randomly rotated
   by a multiple of 90 degrees, thresholded into irregular blobs.
2. A source: a texture image (a folder the user names, e.g. Describable Textures), the
   image itself flipped or rotated, or, without textures, smooth Perlin colour noise.
3. A blend inside the mask with opacity ``beta`` drawn per image:
   ``anomalous = (1 - M) * image + M * ((1 - beta) * source + beta * image)``.

Everything is batched on tensors and draws only from the ``torch.Generator`` it is given,
so the same seed gives the same anomalies. Images and sources must share one value range
(raw pixels or the detector's normalisation: the blend is linear).
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F


def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(
    count: int, size: tuple[int, int], resolution: tuple[int, int], generator: torch.Generator
) -> torch.Tensor:
    """``count`` fields of 2-D Perlin noise (count, H, W), about in [-1, 1].

    ``resolution`` is the number of gradient cells per axis; the field is computed on a
    grid padded up to a multiple of it, then cropped.
    """
    height, width = size
    cells_y, cells_x = resolution
    padded_h, padded_w = math.ceil(height / cells_y) * cells_y, math.ceil(width / cells_x) * cells_x
    angles = 2 * math.pi * torch.rand(count, cells_y + 1, cells_x + 1, generator=generator)
    gradients = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)  # (count, cy+1, cx+1, 2)
    ys = torch.arange(padded_h, dtype=torch.float32) * cells_y / padded_h
    xs = torch.arange(padded_w, dtype=torch.float32) * cells_x / padded_w
    y0, x0 = ys.floor().long(), xs.floor().long()
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]

    def corner(dy: int, dx: int) -> torch.Tensor:
        g = gradients[:, (y0 + dy)[:, None], (x0 + dx)[None, :]]  # (count, H, W, 2)
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    uy, ux = _fade(fy), _fade(fx)
    top = corner(0, 0) * (1 - ux) + corner(0, 1) * ux
    bottom = corner(1, 0) * (1 - ux) + corner(1, 1) * ux
    return (math.sqrt(2) * (top * (1 - uy) + bottom * uy))[:, :height, :width]


@attrs.frozen
class SyntheticAnomalies:
    """Pastes Perlin-shaped anomalies into a batch; returns the images and their exact masks."""

    #: Range of the source's opacity complement: beta = 1 keeps the image, 0 pastes the source.
    beta: tuple[float, float] = (0.1, 1.0)
    #: Perlin scales are 2**k cells per axis, k drawn from [min_scale, max_scale).
    min_scale: int = 0
    max_scale: int = 6
    #: Noise above this becomes the mask.
    threshold: float = 0.5
    #: Fraction of images that receive an anomaly (the rest stay normal, mask all zero).
    anomaly_probability: float = 0.5

    def __attrs_post_init__(self) -> None:
        low, high = self.beta
        if not 0 <= low <= high <= 1:
            raise ValueError(f"beta must be a range inside [0, 1], got {self.beta}")
        if not 0 <= self.min_scale < self.max_scale:
            raise ValueError(f"need 0 <= min_scale < max_scale, got {self.min_scale}, {self.max_scale}")
        if not 0 <= self.anomaly_probability <= 1:
            raise ValueError(f"anomaly_probability must be in [0, 1], got {self.anomaly_probability}")

    def masks(self, count: int, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        """Binary Perlin masks (count, 1, H, W); each non-empty, or it is drawn again."""
        out = torch.zeros(count, 1, *size)
        for index in range(count):
            for _attempt in range(20):
                scale_y, scale_x = (
                    2 ** int(torch.randint(self.min_scale, self.max_scale, (1,), generator=generator)) for _ in range(2)
                )
                noise = perlin_noise(1, size, (scale_y, scale_x), generator)[0]
                turns = int(torch.randint(0, 4, (1,), generator=generator))
                if turns % 2 and size[0] == size[1]:
                    noise = torch.rot90(noise, turns)
                elif turns:
                    noise = torch.rot90(noise, 2)
                mask = (noise > self.threshold).float()
                if mask.any():
                    out[index, 0] = mask
                    break
        return out

    def noise_sources(self, count: int, size: tuple[int, int], generator: torch.Generator, low: float, high: float):
        """Smooth colour noise in [low, high] (count, 3, H, W): the source without textures."""
        noise = perlin_noise(count * 3, size, (4, 4), generator).reshape(count, 3, *size)
        return low + (high - low) * (noise.clamp(-1, 1) + 1) / 2

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator, sources: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomalous images, masks (N, 1, H, W) in {0, 1}) for images (N, 3, H, W).

        ``sources`` (N, 3, H', W'): texture images, resized to the images; None pastes
        flipped copies of the images themselves on even draws and colour noise on odd ones.
        """
        count, _, height, width = images.shape
        masks = self.masks(count, (height, width), generator)
        chosen = torch.rand(count, generator=generator) < self.anomaly_probability
        masks = masks * chosen.view(count, 1, 1, 1).float()
        if sources is None:
            flipped = torch.flip(images, dims=(-1, -2))
            noise = self.noise_sources(count, (height, width), generator, float(images.min()), float(images.max()))
            use_self = torch.rand(count, generator=generator) < 0.5
            sources = torch.where(use_self.view(count, 1, 1, 1), flipped, noise.to(images))
        elif sources.shape[-2:] != (height, width):
            sources = F.interpolate(sources.float(), size=(height, width), mode="bilinear", align_corners=False)
        low, high = self.beta
        beta = (low + (high - low) * torch.rand(count, generator=generator)).view(count, 1, 1, 1).to(images)
        masks = masks.to(images)
        blended = (1 - beta) * sources.to(images) + beta * images
        return images * (1 - masks) + blended * masks, masks
