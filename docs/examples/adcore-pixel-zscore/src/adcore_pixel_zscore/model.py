"""Per-pixel z-scores against the normal images' statistics (see README for the steps)."""

from __future__ import annotations

import attrs
import torch
from adcore import AnomalyDetector, Batch, DetectorOutput, non_negative, positive, to_size
from adcore.components import gaussian_blur


@attrs.define
class PixelZScoreConfig:
    image_size: tuple[int, int] = attrs.field(default=(256, 256), converter=to_size)
    smoothing_sigma: float = attrs.field(default=2.0, validator=non_negative)
    map_sigma: float = attrs.field(default=4.0, validator=non_negative)
    #: Floor on a pixel's std, in normalised units: flat regions are not infinitely strict.
    min_std: float = attrs.field(default=0.05, validator=positive)


class PixelZScore(AnomalyDetector):
    name = "pixel-zscore"
    Config = PixelZScoreConfig

    def __init__(self, config: PixelZScoreConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.register_buffer("pixel_mean", torch.empty(0))
        self.register_buffer("pixel_std", torch.empty(0))

    def smooth(self, images: torch.Tensor) -> torch.Tensor:
        n, c, h, w = images.shape  # blur every colour channel the same way
        return gaussian_blur(images.float().reshape(n * c, 1, h, w), self.config.smoothing_sigma).reshape(n, c, h, w)

    def fit_begin(self) -> None:
        self._sum = self._squares = None
        self._count = 0

    def fit_batch(self, batch: Batch) -> None:
        images = self.smooth(batch.image).double()
        total, squares = images.sum(dim=0), images.square().sum(dim=0)
        self._sum = total if self._sum is None else self._sum + total
        self._squares = squares if self._squares is None else self._squares + squares
        self._count += images.shape[0]

    def fit_end(self) -> None:
        if self._count < 2:
            raise ValueError(f"pixel-zscore: needs at least 2 training images, got {self._count}")
        mean = self._sum / self._count
        variance = (self._squares / self._count - mean.square()).clamp_min(0) * self._count / (self._count - 1)
        self.pixel_mean = mean.float()
        self.pixel_std = variance.sqrt().clamp_min(self.config.min_std).float()
        self._sum = self._squares = None

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        z = ((self.smooth(images) - self.pixel_mean) / self.pixel_std).abs().amax(dim=1, keepdim=True)
        anomaly_map = gaussian_blur(z, self.config.map_sigma)
        return DetectorOutput.from_map(anomaly_map)
