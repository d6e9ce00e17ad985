"""U-Flow (Tailanian et al. 2023), step by step as in the paper.

1. Multi-scale features: a frozen pretrained encoder at several stages whose strides
   double (lite0 stages 2, 3: strides 8, 16; the paper uses MS-CaiT), each normalised
   per image over (C, h, w) (a parameter-free layer norm). The encoder is frozen and
   images are not augmented, so its features are computed once and cached.
   ``standardize=True`` adds a fixed affine layer measured in one pass over the training
   features: per channel and position, (x - mean) / std (Glow's data-dependent ActNorm
   initialisation, kept fixed). The flow's convolutions are translation-equivariant; this
   tells them what is normal *where*, and starts the latents near a standard normal.
2. U-shaped normalizing flow (:mod:`adcore_uflow.flow`): the coarsest scale's flow runs
   first; half its output channels are that scale's latents, the other half are upsampled
   invertibly and concatenated to the next finer scale's features before its flow.
3. Training: maximum likelihood of the latents under a standard normal (change of
   variables), Adam with a linear learning-rate decay. (The fixed standardisation only
   shifts the log-likelihood by a constant.)
4. Anomaly map: per scale, the likelihood exp(-mean_c z^2 / 2) (per dimension), upsampled
   to the image and averaged over scales; the image score is the map's maximum.
5. A-contrario segmentation (:mod:`adcore_uflow.nfa`): -log10 NFA per pixel, positive
   where an anomaly is detected, with no anomalous data. ``map_type="nfa"`` returns it as
   the anomaly map (the image score is then its maximum, so ``score > 0`` is the NFA
   decision); :meth:`Uflow.nfa_map` and :meth:`Uflow.nfa_decision` give it directly.
"""

from __future__ import annotations

import itertools

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
    unit_interval,
)
from adcore.components import (
    FeatureStandardizer,
    flow_nll_loss,
    gaussian_log_likelihood,
    log_likelihood_to_anomaly_map,
)
from torch import nn

from adcore_uflow.flow import UShapedFlow
from adcore_uflow.nfa import log_nfa_map

MAP_TYPES = ("likelihood", "nfa")


# Checks the core has no validator for (the core prefixes "uflow: " to the messages).
def _finest_first(_instance, attribute, value: tuple[int, ...]) -> None:
    if list(value) != sorted(value):
        raise ValueError(f"{attribute.name} must be ordered finest first (increasing stage indices), got {value}")


def _odd(_instance, attribute, value: int) -> None:
    if value % 2 != 1:
        raise ValueError(f"{attribute.name} must be odd (a window centred on the pixel), got {value}")


def _open_unit_interval(_instance, attribute, value: float) -> None:
    # Not the core's unit_interval: at 0 or 1 the chi2 quantile or the binomial tail is undefined.
    if not 0.0 < value < 1.0:
        raise ValueError(f"{attribute.name} must be in (0, 1), got {value}")


@attrs.define
class UflowConfig:
    backbone: str = "tf_efficientnet_lite0"
    #: Encoder stages, finest first; each must have twice the stride of the previous one.
    #: On bottle (lite0), (2, 3) localises better than (2, 3, 4) (stride 32 is too coarse).
    layers: tuple[int, ...] = attrs.field(
        default=(2, 3), converter=to_int_tuple, validator=[distinct_levels, _finest_first]
    )
    image_size: tuple[int, int] = attrs.field(default=(256, 256), converter=to_size)
    #: Coupling blocks per scale (anomalib's default; its ``flow_steps``).
    coupling_blocks: int = attrs.field(default=4, validator=positive)
    affine_clamp: float = attrs.field(default=2.0, validator=positive)
    affine_subnet_channels_ratio: float = attrs.field(default=1.0, validator=positive)
    permute_soft: bool = attrs.field(default=False, converter=to_bool)
    #: Standardise each scale per channel and position with training statistics (step 1).
    standardize: bool = attrs.field(default=True, converter=to_bool)
    epochs: int = attrs.field(default=6, validator=positive)
    #: Lower than the reference's 1e-3: the standardised start localises well, and a
    #: higher rate moves the flow away from it faster than it learns (see the README).
    learning_rate: float = attrs.field(default=2e-4, validator=positive)
    weight_decay: float = attrs.field(default=1e-5, validator=non_negative)
    #: The learning rate decays linearly to this fraction of itself over the epochs.
    lr_end_factor: float = attrs.field(default=0.4, validator=unit_interval)
    #: What ``forward`` returns as the anomaly map: the likelihood map, or -log10 NFA.
    map_type: str = attrs.field(default="likelihood", validator=one_of(*MAP_TYPES))
    #: A-contrario test: window (in latent positions at the finest scale, halved per coarser scale).
    nfa_window_size: int = attrs.field(default=7, validator=[positive, _odd])
    #: A latent is a candidate when its square exceeds this chi2(1) quantile (anomalib's
    #: ``binomial_probability_thr``): under normality a fraction 1 - threshold of latents is.
    nfa_probability_threshold: float = attrs.field(default=0.5, validator=_open_unit_interval)
    weights: str = "auto"


class Uflow(AnomalyDetector):
    name = "uflow"
    Config = UflowConfig

    def __init__(self, config: UflowConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        self.encoder = create_feature_extractor(cfg.backbone, cfg.layers, weights=cfg.weights, frozen=True)
        strides = self.encoder.strides
        if any(b != 2 * a for a, b in itertools.pairwise(strides)):
            # Raised from __init__: the core prefixes "uflow: " (from_config_dict).
            raise ValueError(
                f"the layers' strides must double from one scale to the next, got {strides} for {cfg.layers}"
            )
        height, width = cfg.image_size
        if height % strides[-1] or width % strides[-1]:
            raise ValueError(f"image_size {cfg.image_size} must be divisible by the coarsest stride {strides[-1]}")
        sizes = [(height // s, width // s) for s in strides]
        self.flow = UShapedFlow(
            self.encoder.channels,
            sizes,
            coupling_blocks=cfg.coupling_blocks,
            affine_clamp=cfg.affine_clamp,
            affine_subnet_channels_ratio=cfg.affine_subnet_channels_ratio,
            permute_soft=cfg.permute_soft,
        )
        # A floor of 0.1 x the mean std: positions where a channel is (almost) constant on
        # the training images must not turn tiny deviations into huge latents.
        self.standardizers = nn.ModuleList(
            FeatureStandardizer((channels, h, w), relative_floor=0.1, name="uflow")
            for channels, (h, w) in zip(self.encoder.channels, sizes)
        )

    @property
    def training_spec(self) -> TrainingSpec:
        return TrainingSpec.gradient(self, epochs=self.config.epochs, initial_pass=self.config.standardize)

    # -- step 1: features ------------------------------------------------------------------
    def layer_normalized(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features, finest first, each layer-normalised over (C, h, w) so scales are comparable."""
        return [F.layer_norm(f.float(), f.shape[1:]) for f in self.encoder(images)]

    def frozen_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        # No learned parameters up to here: training reads them through the per-image cache.
        return self.layer_normalized(images)

    def standardized(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per channel and position (x - mean) / std; the identity before an initial pass or without ``standardize``."""
        return [standardize(f) for f, standardize in zip(features, self.standardizers)]

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Step 1 complete: the flow's input."""
        return self.standardized(self.layer_normalized(images))

    # -- step 3: training ------------------------------------------------------------------
    def configure_optimizers(self, budget: Budget):
        cfg = self.config
        optimizer = torch.optim.Adam(self.flow.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        # Stepped once per epoch over the configured epochs; if the engine runs more
        # (``--epochs``), the rate stays at its final value.
        scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, cfg.lr_end_factor, total_iters=cfg.epochs)
        return optimizer, scheduler

    def initial_pass_batch(self, batch: Batch) -> None:
        for feature, standardize in zip(self.training_features(batch), self.standardizers):
            standardize.update(feature)

    def initial_pass_end(self) -> None:
        for standardize in self.standardizers:
            standardize.finish()

    def training_step(self, batch: Batch) -> torch.Tensor:
        features = self.standardized(self.training_features(batch))
        latents, log_jac_det = self.flow(features)
        return flow_nll_loss(latents, log_jac_det)

    # -- steps 4 and 5: scoring --------------------------------------------------------------
    def latents(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The flow's latents for ``images``, finest scale first, in float32 (no input checks: see ``predict``)."""
        latents, _ = self.flow(self.features(images))
        return [z.float() for z in latents]

    def likelihood_map(self, latents: list[torch.Tensor], image_size) -> torch.Tensor:
        """Minus the per-dimension likelihood, upsampled and averaged over scales: (N, 1, H, W)."""
        return log_likelihood_to_anomaly_map(
            [gaussian_log_likelihood(z) for z in latents], image_size, mode="probability", fusion="mean"
        )

    def nfa_map(self, images: torch.Tensor) -> torch.Tensor:
        """-log10 NFA per pixel (N, 1, H, W); > 0 marks an a-contrario detection.

        An entry point like :meth:`predict`: it checks the images and that the detector is fitted.
        """
        self.check_images(images)
        self.check_fitted()
        cfg = self.config
        return log_nfa_map(self.latents(images), images.shape[-2:], cfg.nfa_window_size, cfg.nfa_probability_threshold)

    def nfa_decision(self, images: torch.Tensor) -> torch.Tensor:
        """(N,) bool: an image is anomalous when any of its pixels has -log10 NFA > 0."""
        return self.nfa_map(images).flatten(1).amax(dim=1) > 0

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        cfg = self.config
        latents = self.latents(images)
        size = images.shape[-2:]
        if cfg.map_type == "nfa":
            anomaly_map = log_nfa_map(latents, size, cfg.nfa_window_size, cfg.nfa_probability_threshold)
        else:
            anomaly_map = self.likelihood_map(latents, size)
        return DetectorOutput.from_map(anomaly_map)
