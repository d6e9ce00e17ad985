"""CFlow (Gudovskiy et al., WACV 2022), step by step as in the paper.

1. Encoder: a backbone pretrained on ImageNet, frozen; its feature maps at several
   scales (the ends of the stages, just before each pooling/striding step) describe every
   image position. Its features are computed once and cached across epochs.
   Before training, one pass over the training images also measures each channel's mean
   and standard deviation; the decoders see standardised features. This is a fixed,
   invertible affine first layer of each flow (like Glow's data-dependent ActNorm
   initialisation): it shifts the log-likelihood by a constant per scale, which the
   reference below cancels, but the flows start at the data's scale and converge in a
   few CPU epochs instead of spending them learning the features' magnitude.
2. Decoders: one conditional normalizing flow per scale (``coupling_blocks`` FrEIA
   all-in-one affine couplings with fully connected subnets and scales soft-clamped by
   ``affine_clamp``). Each feature vector is decoded *independently*, conditioned on a
   2-D sinusoidal encoding of its position (``condition_vector`` channels), into a
   standard normal.
3. Training: maximum likelihood on *fiber batches*: every step draws a random subset of
   the image batch's positions (feature vectors with their position codes), decodes it
   and minimises ``-log sigmoid(log p(x))`` with ``log p`` per dimension (the paper's
   loss). ``fiber_batch_size`` positions are drawn at the finest scale and the same
   fraction at the coarser ones, so every decoder sees each position equally often.
   (The peer takes one optimizer step per 64 positions; adcore's loop takes one step per
   image batch, so a fiber batch here is larger and the learning rate higher.)
4. Anomaly map: per scale, the log-likelihood per dimension of every position minus a
   reference stored at the end of training (the highest log-likelihood seen on training
   positions in the last epoch), exponentiated into a relative likelihood (about 1 at most), upsampled to
   the image and summed over scales; the map is ``n_scales - sum`` (0 where every scale
   is as likely as the most likely training position). The image score is its maximum.

The reference replaces the peer implementation's normalisation by the test batch's own
maximum, so a test image's score does not depend on the other images in its batch.
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
    one_of,
    positive,
    to_int_tuple,
    to_size,
)
from adcore.components import (
    FeatureStandardizer,
    all_in_one_flow,
    gaussian_log_likelihood,
    log_likelihood_to_anomaly_map,
    mlp_subnet,
    positional_encoding_2d,
)
from torch import nn

#: "freia-cflow": decoders conditioned on the position code (the method); "freia-flow":
#: unconditional decoders (the paper's ablation without positional conditioning).
DECODERS = ("freia-cflow", "freia-flow")


def _check_condition_vector(instance, attribute, value) -> None:
    if value <= 0 or value % 4:
        raise ValueError(
            f"{attribute.name} must be a positive multiple of 4 (sin/cos of rows and columns), got {value}"
        )


@attrs.define
class CflowConfig:
    backbone: str = "tf_efficientnet_lite0"
    layers: tuple[int, ...] = attrs.field(default=(2, 3, 4), converter=to_int_tuple, validator=distinct_levels)
    image_size: tuple[int, int] = attrs.field(default=(256, 256), converter=to_size)
    decoder: str = attrs.field(default="freia-cflow", validator=one_of(*DECODERS))
    condition_vector: int = attrs.field(default=128, validator=_check_condition_vector)
    coupling_blocks: int = attrs.field(default=8, validator=positive)
    affine_clamp: float = attrs.field(default=1.9, validator=positive)
    fiber_batch_size: int = attrs.field(default=4096, validator=positive)
    permute_soft: bool = False
    learning_rate: float = attrs.field(default=2e-3, validator=positive)
    epochs: int = attrs.field(default=2, validator=positive)
    weights: str = "auto"


class Cflow(AnomalyDetector):
    name = "cflow"
    Config = CflowConfig

    def __init__(self, config: CflowConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        self.encoder = create_feature_extractor(cfg.backbone, cfg.layers, weights=cfg.weights, frozen=True)
        condition = (cfg.condition_vector,) if cfg.decoder == "freia-cflow" else None
        # The subnet is Linear-ReLU-Linear with a hidden layer twice the input (the paper's).
        self.decoders = nn.ModuleList(
            all_in_one_flow(
                (channels,),
                cfg.coupling_blocks,
                mlp_subnet(2.0),
                cfg.affine_clamp,
                condition_dims=condition,
                permute_soft=cfg.permute_soft,
            )
            for channels in self.encoder.channels
        )
        self.standardizers = nn.ModuleList(
            FeatureStandardizer((channels,), name="cflow") for channels in self.encoder.channels
        )
        # Per scale: the highest log-likelihood per dimension of a training position.
        self.register_buffer("reference_log_likelihood", torch.zeros(len(cfg.layers)))

    @property
    def training_spec(self) -> TrainingSpec:
        return TrainingSpec.gradient(self, epochs=self.config.epochs, initial_pass=True)

    def configure_optimizers(self, budget: Budget) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.decoders.parameters(), lr=self.config.learning_rate)

    # -- the decoders over feature vectors ---------------------------------------------
    def _log_likelihood(
        self, scale: int, vectors: torch.Tensor, positions: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """Log-likelihood per dimension of feature vectors (M, C) at flat positions (M,).

        The decoders always run in float32, also under bf16 autocast (which still speeds
        up the encoder): a log-determinant summed over blocks and channels in bf16 loses
        the small differences the map is made of.
        """
        decoder = self.decoders[scale]
        with torch.autocast(device_type=vectors.device.type, enabled=False):
            vectors = self.standardizers[scale](vectors)
            if self.config.decoder == "freia-cflow":
                code = positional_encoding_2d(self.config.condition_vector, height, width).to(vectors.device)
                condition = code.flatten(1).T[positions]  # (M, condition_vector)
                z, log_jac_det = decoder(vectors, c=[condition])
            else:
                z, log_jac_det = decoder(vectors)
            return gaussian_log_likelihood(z, log_jac_det)

    # -- training on fiber batches -----------------------------------------------------
    def frozen_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        # The encoder is frozen and images are not augmented: training reads its features
        # through the per-image cache.
        return self.encoder(images)

    def fit_begin(self) -> None:
        # For the reference: each image's most recent step, and each step's per-scale
        # maximum; at the end, the steps still referenced are those of the last epoch.
        self._last_step_of_image: dict[str, int] = {}
        self._step_maxima: dict[int, torch.Tensor] = {}

    def initial_pass_batch(self, batch: Batch) -> None:
        # Encodes (and caches) every training image once, measuring the channel statistics.
        for feature, standardize in zip(self.training_features(batch), self.standardizers):
            standardize.update(feature.permute(0, 2, 3, 1).reshape(-1, feature.shape[1]))

    def initial_pass_end(self) -> None:
        for standardize in self.standardizers:
            standardize.finish()

    def training_step(self, batch: Batch) -> torch.Tensor:
        features = self.training_features(batch)
        # Every scale draws the same fraction of its positions, so each decoder sees each
        # training position equally often (as when walking through all positions).
        fraction = min(1.0, self.config.fiber_batch_size / max(f[:, 0].numel() for f in features))
        losses, maxima = [], []
        for scale, feature in enumerate(features):
            _, channels, height, width = feature.shape
            vectors = feature.permute(0, 2, 3, 1).reshape(-1, channels)  # (n*h*w, C)
            count = max(1, round(fraction * vectors.shape[0]))
            fiber = torch.randperm(vectors.shape[0], device=vectors.device)[:count]
            log_likelihood = self._log_likelihood(scale, vectors[fiber], fiber % (height * width), height, width)
            losses.append(-F.logsigmoid(log_likelihood).mean())
            maxima.append(log_likelihood.detach().max())
        self._record_maxima(batch.path, torch.stack(maxima))
        return torch.stack(losses).sum()

    def _record_maxima(self, paths: list[str], maxima: torch.Tensor) -> None:
        step = len(self._step_maxima)
        self._step_maxima[step] = maxima
        for path in paths:
            self._last_step_of_image[path] = step

    def fit_end(self) -> None:
        last_epoch = sorted(set(self._last_step_of_image.values()))
        if not last_epoch:
            raise RuntimeError("cflow: fit ended before any training step: no reference log-likelihood to store")
        reference = torch.stack([self._step_maxima[step] for step in last_epoch]).amax(dim=0)
        self.reference_log_likelihood.copy_(reference.float())
        self._step_maxima.clear()
        self._last_step_of_image.clear()

    # -- inference -----------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> DetectorOutput:
        log_likelihoods = []
        for scale, feature in enumerate(self.encoder(images)):
            n, channels, height, width = feature.shape
            vectors = feature.permute(0, 2, 3, 1).reshape(-1, channels)
            positions = torch.arange(height * width, device=vectors.device).repeat(n)
            log_likelihood = self._log_likelihood(scale, vectors, positions, height, width)
            log_likelihoods.append(log_likelihood.reshape(n, height, width) - self.reference_log_likelihood[scale])
        # "probability" mode gives -exp(log p - reference) per scale, summed over scales.
        likelihood = log_likelihood_to_anomaly_map(log_likelihoods, images.shape[-2:], mode="probability", fusion="sum")
        anomaly_map = len(log_likelihoods) + likelihood
        return DetectorOutput.from_map(anomaly_map)
