"""FastFlow (Yu et al. 2021, "FastFlow: Unsupervised Anomaly Detection and Localization
via 2D Normalizing Flows"), step by step as in the paper.

1. Encoder: a backbone pretrained on ImageNet, frozen, gives feature maps at several
   scales (its features are computed once and cached across epochs: the images are not
   augmented).
2. Each scale is normalised by a LayerNorm over (C, H, W) (the paper's choice for CNN
   encoders), then mapped by its own 2-D normalizing flow: ``coupling_blocks`` affine coupling
   blocks whose subnets are small convolutional networks, alternating 3x3 and 1x1 kernels
   (``conv3x3_only=True``: all 3x3). The flows keep the feature maps' spatial layout, so
   every position gets its own likelihood.
   The LayerNorm's learnable affine is per channel and position. ``norm_init="data"``
   initialises it from one pass over the training features (Glow's data-dependent
   ActNorm initialisation): the flows start from features standardised per position,
   which tells their translation-equivariant convolutions what is normal *where*.
   ``"identity"`` starts it at 1 and 0 as the paper, to be learned by the optimizer.
3. Training maximises the likelihood of normal features under a standard normal: the
   loss is each scale's negative log-likelihood (squared norm of the flow output minus the
   log-determinant of its Jacobian), summed over scales; Adam (weight decay 1e-5).
4. Anomaly map: per scale and position, the likelihood exp(mean log p) of the flow output,
   negated, upsampled to the image and averaged over scales, then smoothed by a Gaussian
   blur (``blur_sigma``, 4 pixels; 0 turns it off). The image score is the map's maximum.
"""

from __future__ import annotations

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
    distinct_levels,
    non_negative,
    one_of,
    positive,
    to_bool,
    to_int_tuple,
    to_size,
)
from adcore.components import (
    FeatureStandardizer,
    all_in_one_flow,
    conv_subnet,
    flow_nll_loss,
    gaussian_blur,
    gaussian_log_likelihood,
    log_likelihood_to_anomaly_map,
)
from torch import nn


def _check_size(_instance, attribute, value: tuple[int, int]) -> None:
    # The core has no validator for a minimum image size (a tuple); the core prefixes "fastflow: ".
    if min(value) < 32:
        raise ValueError(f"{attribute.name} must be at least 32 pixels per side, got {value}")


NORM_INITS = ("data", "identity")


@attrs.define
class FastflowConfig:
    backbone: str = "tf_efficientnet_lite0"
    #: Stages of the backbone (timm feature indices); each gets its own LayerNorm and flow.
    #: For tf_efficientnet_lite0, (2, 3, 4) are strides 8, 16, 32: on bottle they reach a
    #: higher image AUROC in fewer epochs than the stride 4-16 stages (1, 2, 3).
    layers: tuple[int, ...] = attrs.field(default=(2, 3, 4), converter=to_int_tuple, validator=distinct_levels)
    image_size: tuple[int, int] = attrs.field(default=(256, 256), converter=to_size, validator=_check_size)
    #: Coupling blocks per flow (8 in the paper for CNN encoders).
    coupling_blocks: int = attrs.field(default=8, converter=int, validator=positive)
    #: All subnets 3x3 instead of alternating 3x3 / 1x1.
    conv3x3_only: bool = attrs.field(default=False, converter=to_bool)
    #: Hidden channels of a subnet relative to its input channels.
    hidden_ratio: float = attrs.field(default=1.0, converter=float, validator=positive)
    #: Soft clamp of the affine scales' exponent (keeps training stable).
    affine_clamp: float = attrs.field(default=2.0, converter=float, validator=positive)
    #: How the LayerNorms' affine starts: "data" (per-position statistics of the training
    #: features) or "identity" (the paper's 1 and 0).
    norm_init: str = attrs.field(default="data", validator=one_of(*NORM_INITS))
    #: The paper's 1e-3 with 500 GPU epochs; on bottle (lite0) the data-initialised flows
    #: localise best near the start, and 1e-3 moves away from it within 2-3 epochs.
    learning_rate: float = attrs.field(default=2e-4, converter=float, validator=positive)
    weight_decay: float = attrs.field(default=1e-5, converter=float, validator=non_negative)
    #: The paper trains 500 epochs on a GPU; 6 on a CPU (about 30 s on bottle).
    epochs: int = attrs.field(default=6, converter=int, validator=positive)
    #: Sigma (pixels) of the Gaussian blur of the final map, as most papers smooth their
    #: maps (0 turns it off); on bottle it adds 0.002-0.017 pixel AUROC.
    blur_sigma: float = attrs.field(default=4.0, converter=float, validator=non_negative)
    weights: str = "auto"


def _subnet_for_block(conv3x3_only: bool, hidden_ratio: float):
    """Block index -> subnet constructor: 3x3 on even blocks, 1x1 on odd ones (the paper's alternation)."""

    def for_block(index: int):
        kernel_size = 3 if conv3x3_only or index % 2 == 0 else 1
        return conv_subnet(kernel_size, hidden_ratio)

    return for_block


class Fastflow(AnomalyDetector):
    name = "fastflow"
    Config = FastflowConfig

    def __init__(self, config: FastflowConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        self.encoder = create_feature_extractor(cfg.backbone, cfg.layers, weights=cfg.weights, frozen=True)
        # The LayerNorms are over (C, H, W), so they need each scale's exact feature size;
        # a backbone's rounding at odd sizes is easiest to get right by running it once.
        with torch.no_grad():
            shapes = [tuple(f.shape[1:]) for f in self.encoder(torch.zeros(1, 3, *cfg.image_size))]
        self.norms = nn.ModuleList(nn.LayerNorm(list(shape), elementwise_affine=True) for shape in shapes)
        subnet = _subnet_for_block(cfg.conv3x3_only, cfg.hidden_ratio)
        self.flows = nn.ModuleList(
            all_in_one_flow(shape, cfg.coupling_blocks, subnet, affine_clamping=cfg.affine_clamp, per_block=True)
            for shape in shapes
        )
        self._norm_statistics: list[FeatureStandardizer] | None = None  # only during fit

    @property
    def training_spec(self) -> TrainingSpec:
        return TrainingSpec.gradient(self, epochs=self.config.epochs, initial_pass=self.config.norm_init == "data")

    def configure_optimizers(self, budget: Budget) -> torch.optim.Optimizer:
        trainable = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(trainable, lr=self.config.learning_rate, weight_decay=self.config.weight_decay)

    def check_images(self, images: torch.Tensor) -> None:
        super().check_images(images)
        if tuple(images.shape[-2:]) != tuple(self.config.image_size):
            raise ValueError(
                f"fastflow: images must be {tuple(self.config.image_size)} (the LayerNorms are fitted to that "
                f"feature size), got {tuple(images.shape[-2:])}"
            )

    def flow_outputs(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Step 2: each scale through its LayerNorm and its flow -> (outputs z, log-det Jacobians (N,))."""
        outputs, log_jac_dets = [], []
        for feature, norm, flow in zip(features, self.norms, self.flows):
            # contiguous: the cache and backbone hand out channels-last maps, LayerNorm wants (C, H, W) order.
            z, log_jac_det = flow(norm(feature.float().contiguous()))
            outputs.append(z)
            log_jac_dets.append(log_jac_det)
        return outputs, log_jac_dets

    def frozen_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        # Step 1: the encoder is frozen and the images are not augmented: training reads
        # its features through the per-image cache.
        return self.encoder(images)

    def fit_begin(self) -> None:
        if self.config.norm_init == "data":
            # A floor of 0.1 x the mean std: positions where a channel is (almost) constant
            # on the training images must not turn tiny deviations into huge inputs.
            self._norm_statistics = [
                FeatureStandardizer(norm.normalized_shape, relative_floor=0.1, name="fastflow") for norm in self.norms
            ]

    def initial_pass_batch(self, batch: Batch) -> None:
        # Step 2's data-dependent start: statistics of the LayerNorm-ed features per position.
        for feature, norm, statistics in zip(self.training_features(batch), self.norms, self._norm_statistics):
            statistics.update(F.layer_norm(feature.float().contiguous(), norm.normalized_shape))

    def initial_pass_end(self) -> None:
        with torch.no_grad():
            for norm, statistics in zip(self.norms, self._norm_statistics):
                statistics.finish()
                norm.weight.copy_(1.0 / statistics.std)
                norm.bias.copy_(-statistics.mean / statistics.std)
        self._norm_statistics = None

    def fit_end(self) -> None:
        self._norm_statistics = None

    def training_step(self, batch: Batch) -> torch.Tensor:
        features = self.training_features(batch)
        outputs, log_jac_dets = self.flow_outputs(features)
        # Step 3: the negative log-likelihood of each scale (per dimension), summed over scales.
        return sum(flow_nll_loss([z], log_jac_det) for z, log_jac_det in zip(outputs, log_jac_dets))

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        outputs, _ = self.flow_outputs(self.encoder(images))
        # Step 4: per-position likelihood of the flow output (mean over channels), as the paper.
        log_likelihoods = [gaussian_log_likelihood(z) for z in outputs]
        anomaly_map = log_likelihood_to_anomaly_map(
            log_likelihoods, images.shape[-2:], mode="probability", fusion="mean"
        )
        anomaly_map = gaussian_blur(anomaly_map, self.config.blur_sigma)
        return DetectorOutput.from_map(anomaly_map)
