"""Average-pooled features of a frozen pretrained backbone (DFKDE, DFM, ...).

Methods that model whole images rather than patches summarise a layer's feature map by
average pooling: globally (one vector per image and layer) or over ``k x k`` windows
(a coarser map that keeps the layout). Pooling is done in float32 even under bf16
autocast, because the statistics fitted on the result (PCA, densities) need it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adcore.backbones.feature_extractor import create_feature_extractor


class PooledFeatures(nn.Module):
    """Frozen backbone ``layers``, average-pooled.

    ``kernel_size=None`` pools each layer globally; ``global_vector`` then concatenates the
    layers into (N, sum C). With a kernel size k, each layer is average-pooled over
    non-overlapping k x k windows (k = 1: unchanged).
    """

    def __init__(
        self, backbone: str, layers: Sequence[int], weights: str = "auto", kernel_size: int | None = None
    ) -> None:
        super().__init__()
        if kernel_size is not None and kernel_size < 1:
            raise ValueError(f"pooling kernel size must be >= 1 (or None for global pooling), got {kernel_size}")
        self.kernel_size = kernel_size
        self.feature_extractor = create_feature_extractor(backbone, layers, weights=weights, frozen=True)

    @property
    def channels(self) -> list[int]:
        return self.feature_extractor.channels

    @property
    def strides(self) -> list[int]:
        return self.feature_extractor.strides

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.feature_extractor.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.feature_extractor.std

    def _pool(self, feature: torch.Tensor) -> torch.Tensor:
        if self.kernel_size is None:
            return feature.mean(dim=(2, 3), keepdim=True)
        if self.kernel_size == 1:
            return feature
        if min(feature.shape[-2:]) < self.kernel_size:
            raise ValueError(
                f"pooling kernel size {self.kernel_size} exceeds the {tuple(feature.shape[-2:])} feature map: "
                "use larger images or a smaller kernel"
            )
        return F.avg_pool2d(feature, self.kernel_size)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Pooled float32 feature maps, one per layer: (N, C, h', w'), (N, C, 1, 1) if global."""
        features = self.feature_extractor(images)  # the backbone runs under the caller's autocast
        with torch.autocast(device_type=images.device.type, enabled=False):
            return [self._pool(feature.float()) for feature in features]

    def global_vector(self, images: torch.Tensor) -> torch.Tensor:
        """Globally pooled layers concatenated: (N, sum C). Requires ``kernel_size=None``."""
        if self.kernel_size is not None:
            raise ValueError("global_vector needs global pooling (kernel_size=None)")
        return torch.cat([feature.flatten(1) for feature in self(images)], dim=1)
