"""CFA (Lee, Lee and Song, IEEE Access 2022), step by step as in the paper.

1. Patch features: a frozen ImageNet backbone; each chosen level is averaged over 3x3
   neighbourhoods, upsampled to the finest level and concatenated (computed once per
   training image and cached across epochs).
2. Patch descriptor (trainable): CoordConv positional channels + a 1x1 convolution map the
   patch features to target-oriented features (``gamma_d`` divides the channel count).
3. Memory bank: before training, one pass over the normal images averages the
   target-oriented feature of every position: one centroid per position (reduced to
   ``1 / gamma_c`` as many by k-means when ``gamma_c > 1``). The bank then stays fixed.
4. Training, the coupled-hypersphere loss: for each patch feature, its K nearest
   centroids are pulled inside the hypersphere of radius ``r`` (attraction), and the
   next J (hard negatives) are pushed out past the margin ``alpha`` (repulsion); the
   search for the K + J neighbours is exact, the distances to them carry the gradients.
5. Scoring: per position, the Euclidean distances to the K nearest centroids; the score
   is the softmin weight of the nearest one times its distance. The score map is
   upsampled to the image and blurred (sigma 4); the image score is its maximum.
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
    at_least,
    create_feature_extractor,
    distinct_levels,
    non_negative,
    to_int_tuple,
    to_size,
)
from adcore.components import UpsampleBlurMap, kmeans, nearest_neighbors

from adcore_cfa.descriptor import PatchDescriptor

#: The reference implementations scale the loss by 1 / nu with nu = 1e-3 (Deep SVDD's
#: soft-boundary weight); with Adam the scale only matters relative to its epsilon.
LOSS_SCALE = 1e3


@attrs.define
class CfaConfig:
    backbone: str = "tf_efficientnet_lite0"
    #: Levels 2 and 3 (strides 8 and 16): a 32x32 grid at 256 px. Adding level 1 (stride 4)
    #: makes a 64x64 grid, whose bank of 4096 centroids costs 16x more per search.
    layers: tuple[int, ...] = attrs.field(default=(2, 3), converter=to_int_tuple, validator=distinct_levels)
    image_size: tuple[int, int] = attrs.field(default=(256, 256), converter=to_size)
    weights: str = "auto"
    #: Memory-bank compression: k-means to (positions / gamma_c) centroids when > 1.
    gamma_c: int = attrs.field(default=1, validator=at_least(1))
    #: Descriptor compression: target-oriented features have channels / gamma_d channels.
    gamma_d: int = attrs.field(default=1, validator=at_least(1))
    #: K: centroids each patch feature is attracted to (and the scores' softmin runs over).
    num_neighbors: int = attrs.field(default=3, validator=at_least(1))
    #: J: the next nearest centroids, repelled as hard negatives (0: attraction only).
    num_hard_negative_features: int = attrs.field(default=3, validator=non_negative)
    #: r: radius of the hyperspheres around the centroids.
    radius: float = attrs.field(default=1e-5, validator=non_negative)
    #: alpha: margin of the repulsion term.
    alpha: float = attrs.field(default=0.1, validator=non_negative)
    epochs: int = attrs.field(default=10, validator=non_negative)
    learning_rate: float = attrs.field(default=1e-3, validator=non_negative)
    weight_decay: float = attrs.field(default=5e-4, validator=non_negative)
    blur_sigma: float = attrs.field(default=4.0, validator=non_negative)


class Cfa(AnomalyDetector):
    name = "cfa"
    Config = CfaConfig

    def __init__(self, config: CfaConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        self.feature_extractor = create_feature_extractor(cfg.backbone, cfg.layers, weights=cfg.weights, frozen=True)
        in_channels = sum(self.feature_extractor.channels)
        if cfg.gamma_d > in_channels:  # create_detector prefixes the message with "cfa: "
            raise ValueError(f"gamma_d={cfg.gamma_d} exceeds the {in_channels} channels of layers {cfg.layers}")
        self.descriptor = PatchDescriptor(in_channels, in_channels // cfg.gamma_d)
        # Centroids (M, D); M is set by the training data's feature grid at fit time.
        self.register_buffer("memory_bank", torch.empty(0, in_channels // cfg.gamma_d))
        self.anomaly_map = UpsampleBlurMap(cfg.blur_sigma)
        self._centroid_sum: torch.Tensor | None = None
        self._centroid_count = 0

    @property
    def training_spec(self) -> TrainingSpec:
        return TrainingSpec.gradient(self, epochs=self.config.epochs, initial_pass=True)

    # -- steps 1-2: target-oriented features ------------------------------------------------
    def frozen_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.feature_extractor(images)

    def target_features(self, images: torch.Tensor) -> torch.Tensor:
        """Target-oriented patch features (N, D, h, w) of images."""
        return self.describe(self.frozen_features(images))

    def describe(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """Target-oriented patch features from the backbone's feature levels (training reads them cached)."""
        return self.descriptor([level.float() for level in levels])

    # -- step 3: the memory bank ---------------------------------------------------------------
    def fit_begin(self) -> None:
        self._centroid_sum, self._centroid_count = None, 0

    def initial_pass_batch(self, batch: Batch) -> None:
        features = self.describe(self.training_features(batch)).double().sum(dim=0)
        self._centroid_sum = features if self._centroid_sum is None else self._centroid_sum + features
        self._centroid_count += batch.image.shape[0]

    def initial_pass_end(self) -> None:
        cfg = self.config
        if self._centroid_sum is None:
            raise ValueError("cfa: the memory bank needs at least one training image")
        centroids = (self._centroid_sum / self._centroid_count).float().flatten(1).T.contiguous()  # (h*w, D)
        self._centroid_sum = None
        if cfg.gamma_c > 1:
            centroids = kmeans(centroids, max(1, centroids.shape[0] // cfg.gamma_c))
        needed = cfg.num_neighbors + cfg.num_hard_negative_features
        if centroids.shape[0] < needed:
            raise ValueError(
                f"cfa: the memory bank has {centroids.shape[0]} centroids, fewer than K + J = {needed}; "
                "use a larger image, finer layers or a smaller gamma_c"
            )
        self.memory_bank = centroids

    # -- step 4: coupled-hypersphere adaptation ---------------------------------------------
    def configure_optimizers(self, budget: Budget) -> torch.optim.Optimizer:
        cfg = self.config
        return torch.optim.AdamW(
            self.descriptor.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay, amsgrad=True
        )

    def training_step(self, batch: Batch) -> torch.Tensor:
        features = self.describe(self.training_features(batch))
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.coupled_hypersphere_loss(features.float().permute(0, 2, 3, 1).flatten(0, 2))

    def coupled_hypersphere_loss(self, features: torch.Tensor) -> torch.Tensor:
        """Attraction to the K nearest centroids plus repulsion of the next J, features (Q, D)."""
        cfg = self.config
        k, j = cfg.num_neighbors, cfg.num_hard_negative_features
        with torch.no_grad():
            _, index = nearest_neighbors(features.detach(), self.memory_bank, k=k + j)
        # Squared distances to the selected centroids, differentiable w.r.t. the features.
        neighbours = self.memory_bank[index]  # (Q, K + J, D)
        distances = (
            features.square().sum(dim=1, keepdim=True)
            - 2.0 * torch.einsum("qd,qnd->qn", features, neighbours)
            + neighbours.square().sum(dim=2)
        )
        r2 = cfg.radius**2
        attraction = F.relu(distances[:, :k] - r2).mean()
        repulsion = F.relu(r2 - distances[:, k:] - cfg.alpha).mean() if j > 0 else distances.new_zeros(())
        return LOSS_SCALE * (attraction + repulsion)

    # -- step 5: scoring -------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> DetectorOutput:
        features = self.target_features(images)
        n, d, h, w = features.shape
        with torch.autocast(device_type=images.device.type, enabled=False):
            queries = features.float().permute(0, 2, 3, 1).reshape(-1, d)
            distances, _ = nearest_neighbors(queries, self.memory_bank.float(), k=self.config.num_neighbors)
            patch_scores = F.softmin(distances, dim=1)[:, 0] * distances[:, 0]
            anomaly_map = self.anomaly_map(patch_scores.view(n, 1, h, w), images.shape[-2:])
        return DetectorOutput.from_map(anomaly_map)
