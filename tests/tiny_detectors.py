"""Tiny reference detectors for the core's tests: cheap, deterministic, no backbone.

``TinyMean`` (one pass): the per-pixel mean of average-pooled training images; the map
is the channel-wise L2 distance to that mean, upsampled to the image. ``TinyGrad``
(gradients): a 1x1-conv denoiser trained with random input noise, so its result depends
on the seed (noise, data order, initialisation); the map is the reconstruction error.

``plugin`` is a pluggy plugin object registering both, for ``PluginRegistry.add_plugin``.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from adcore import AnomalyDetector, Batch, DetectorOutput, InputSpec, TrainingSpec, hookimpl
from torch import nn

SIZE = 64


@attrs.define
class TinyMeanConfig:
    image_size: tuple[int, int] = attrs.field(default=(SIZE, SIZE), converter=tuple)
    pool: int = 4


class TinyMean(AnomalyDetector):
    name = "tiny-mean"
    Config = TinyMeanConfig

    def __init__(self, config: TinyMeanConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.register_buffer("mean", torch.empty(0))  # shape set by the data (like a memory bank)
        self._sum: torch.Tensor | None = None
        self._count = 0

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.config.image_size)

    def _pooled(self, images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images.float(), self.config.pool)

    def fit_begin(self) -> None:
        self._sum, self._count = None, 0

    def fit_batch(self, batch: Batch) -> None:
        pooled = self._pooled(batch.image).sum(dim=0)
        self._sum = pooled if self._sum is None else self._sum + pooled
        self._count += batch.image.shape[0]

    def fit_end(self) -> None:
        self.mean = self._sum / self._count

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        distance = (self._pooled(images) - self.mean).square().sum(dim=1, keepdim=True).sqrt()
        anomaly_map = F.interpolate(distance, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return DetectorOutput.from_map(anomaly_map)


@attrs.define
class TinyGradConfig:
    image_size: tuple[int, int] = attrs.field(default=(32, 32), converter=tuple)
    epochs: int = 2
    learning_rate: float = 0.05
    noise: float = 0.5


class TinyGrad(AnomalyDetector):
    name = "tiny-grad"
    Config = TinyGradConfig

    def __init__(self, config: TinyGradConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.net = nn.Conv2d(3, 3, kernel_size=1)  # random (global RNG) initialisation

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.config.image_size)

    @property
    def training_spec(self) -> TrainingSpec:
        return TrainingSpec.gradient(self, epochs=self.config.epochs)

    def configure_optimizers(self, budget) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.config.learning_rate)

    def training_step(self, batch: Batch) -> torch.Tensor:
        noisy = batch.image + self.config.noise * torch.randn_like(batch.image)
        return F.mse_loss(self.net(noisy), batch.image)

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        anomaly_map = (self.net(images) - images).square().mean(dim=1, keepdim=True)
        return DetectorOutput.from_map(anomaly_map)


class _Plugin:
    ADCORE_API = ">=2,<3"

    @hookimpl
    def adcore_register_detectors(self, register):
        register(TinyMean)
        register(TinyGrad)


plugin = _Plugin()


def named(name: str) -> type:
    """A ``TinyMean`` registered under another name (for fake plugins)."""
    return type(f"TinyMean_{name.replace('-', '_')}", (TinyMean,), {"name": name})
