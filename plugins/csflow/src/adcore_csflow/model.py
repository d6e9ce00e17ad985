"""CS-Flow (Rudolph et al., "Fully Convolutional Cross-Scale-Flows for Image-based Defect Detection", WACV 2022).

1. Multi-scale features: the image at three resolutions (full, 1/2, 1/4) goes through one
   frozen pretrained encoder, read at one mid-level layer (stride 16 of
   tf_efficientnet_lite0 by default), giving maps of sizes s, s/2 and s/4 with the same
   channels. The encoder is frozen and images are not augmented, so the features are
   computed once and cached across epochs.
2. Cross-scale flow: ``coupling_blocks`` x (fixed random channel permutation per scale,
   affine coupling over the three scales jointly). Each coupling's subnet is a
   cross-scale convolution block (per-scale 3x3 convolutions plus strided and upsampled
   convolutions from the neighbouring scales, leaky ReLU; the last block uses 5x5), with
   soft-clamped log-scales (``affine_clamp``).
3. Training: maximum likelihood of the features under a standard normal in z,
   i.e. mean(||z||^2 / 2 - log|det J|) per dimension, with Adam and gradient clipping.
4. Image score: the mean of z^2 / 2 over every position, channel and scale (the paper's
   likelihood-based score; the log-determinant, which barely varies between images, is left
   out as in the paper). Anomaly map (``anomaly_map_mode``): the mean of z^2 over channels
   per position, upsampled to the image; ``all`` multiplies the three scales' maps,
   ``max`` uses only the largest scale, as the paper does for localisation.
"""

from __future__ import annotations

import enum

import attrs
import torch
import torch.nn.functional as F
from adcore import (
    AnomalyDetector,
    Batch,
    Budget,
    DetectorOutput,
    TrainingSpec,
    create_feature_extractor,
    non_negative,
    positive,
    to_size,
)
from adcore.components import flow_nll_loss

from adcore_csflow.cross_scale import N_SCALES, cross_scale_flow


class AnomalyMapMode(str, enum.Enum):
    """How the per-scale maps become one anomaly map (anomalib's names)."""

    ALL = "all"  # product of the three scales' maps
    MAX = "max"  # the largest scale only (the paper's localisation)


def _image_size(_instance, attribute, value) -> None:
    # The core has no validator for a minimum image size (a tuple); the core prefixes "csflow: ".
    if min(value) < 32:
        raise ValueError(f"{attribute.name} must be at least 32 px per side (three scales of features), got {value}")


@attrs.define
class CsFlowConfig:
    backbone: str = "tf_efficientnet_lite0"
    #: One encoder level (timm ``forward_intermediates`` index), read at all three image scales.
    layer: int = attrs.field(default=3, converter=int, validator=non_negative)
    image_size: tuple[int, int] = attrs.field(default=(256, 256), converter=to_size, validator=_image_size)
    #: Hidden channels of each cross-scale convolution (anomalib: 1024; 64 keeps an epoch CPU-affordable).
    cross_conv_hidden_channels: int = attrs.field(default=64, converter=int, validator=positive)
    coupling_blocks: int = attrs.field(default=4, converter=int, validator=positive)
    #: Soft clamp of the affine log-scales.
    affine_clamp: float = attrs.field(default=3.0, converter=float, validator=positive)
    epochs: int = attrs.field(default=8, converter=int, validator=positive)
    #: Adam learning rate (anomalib: 2e-4 for 240 epochs; 2e-3 converges in a few epochs here).
    learning_rate: float = attrs.field(default=2e-3, converter=float, validator=positive)
    eps: float = attrs.field(default=1e-4, converter=float, validator=positive)
    weight_decay: float = attrs.field(default=1e-5, converter=float, validator=non_negative)
    gradient_clip_norm: float = attrs.field(default=1.0, converter=float, validator=positive)
    #: ``max``: largest scale only (the paper's localisation); ``all``: product of the three scales.
    anomaly_map_mode: AnomalyMapMode = attrs.field(default=AnomalyMapMode.MAX, converter=AnomalyMapMode)
    weights: str = "auto"


class CsFlow(AnomalyDetector):
    name = "csflow"
    Config = CsFlowConfig

    def __init__(self, config: CsFlowConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        self.encoder = create_feature_extractor(cfg.backbone, (cfg.layer,), weights=cfg.weights, frozen=True)
        # The flow's graph needs each scale's (C, h, w): read them off one blank image.
        with torch.no_grad():
            dims = [tuple(f.shape[1:]) for f in self.multi_scale_features(torch.zeros(1, 3, *cfg.image_size))]
        # The last coupling uses 5x5 kernels for a wider receptive field (as the reference code).
        kernel_sizes = [3] * (cfg.coupling_blocks - 1) + [5]
        self.flow = cross_scale_flow(
            dims, cfg.coupling_blocks, cfg.cross_conv_hidden_channels, cfg.affine_clamp, kernel_sizes
        )

    @property
    def training_spec(self) -> TrainingSpec:
        return TrainingSpec.gradient(self, epochs=self.config.epochs, gradient_clip_norm=self.config.gradient_clip_norm)

    # -- step 1: the same encoder layer at three image resolutions ----------------------------
    def multi_scale_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        height, width = images.shape[-2:]
        features = []
        for k in range(N_SCALES):
            scaled = (
                images
                if k == 0
                else F.interpolate(
                    images, size=(max(1, height >> k), max(1, width >> k)), mode="bilinear", align_corners=False
                )
            )
            features.append(self.encoder(scaled)[0].float())
        return features

    def frozen_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.multi_scale_features(images)

    # -- steps 2-3: the flow, trained by maximum likelihood -----------------------------------
    def configure_optimizers(self, budget: Budget) -> torch.optim.Optimizer:
        cfg = self.config
        trainable = [p for p in self.flow.parameters() if p.requires_grad]  # permutations are fixed
        return torch.optim.Adam(
            trainable, lr=cfg.learning_rate, betas=(0.5, 0.9), eps=cfg.eps, weight_decay=cfg.weight_decay
        )

    def training_step(self, batch: Batch) -> torch.Tensor:
        features = self.training_features(batch)
        z, log_jac_det = self.flow(features)
        return flow_nll_loss(z, log_jac_det)

    # -- step 4: scores and maps from z ------------------------------------------------------
    def anomaly_map(self, z: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """Mean of z^2 over channels per position, upsampled; scales combined per ``anomaly_map_mode``."""
        used = z if self.config.anomaly_map_mode == AnomalyMapMode.ALL else z[:1]
        maps = [
            F.interpolate(
                scale.square().mean(dim=1, keepdim=True), size=image_size, mode="bilinear", align_corners=False
            )
            for scale in used
        ]
        return torch.stack(maps).prod(dim=0)

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        z, _ = self.flow(self.multi_scale_features(images), jac=False)
        z = [scale.float() for scale in z]
        pred_score = 0.5 * torch.cat([scale.flatten(1) for scale in z], dim=1).square().mean(dim=1)
        return DetectorOutput(pred_score=pred_score, anomaly_map=self.anomaly_map(z, tuple(images.shape[-2:])))
