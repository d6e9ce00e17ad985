"""DFKDE (Deep Feature Kernel Density Estimation, as in anomalib), step by step.

1. Deep features: the chosen layers of an ImageNet-pretrained backbone, each
   global-average-pooled to one vector per image, concatenated.
2. Fit: on at most ``max_training_points`` training vectors (a random subset beyond
   that), fit a PCA keeping ``n_pca_components``; project.
3. Feature scaling of the projections: ``"scale"`` divides by the largest training
   vector length (``max_length``, stored so test vectors get the same scale), ``"norm"``
   scales every vector to unit length.
4. Fit a Gaussian kernel density estimate (Scott's bandwidth) on the scaled projections.
5. Score: the log-density of a test image's scaled projection, turned into an anomaly
   probability ``1 / (1 + exp(threshold_steepness * (log_density - threshold_offset)))``
   (low density -> probability near 1).

The method scores whole images: it has no localisation. Its anomaly map is the image
score at every pixel, so map-based metrics stay defined but carry no spatial information.
"""

from __future__ import annotations

import warnings

import attrs
import torch
from adcore import AnomalyDetector, Batch, DetectorOutput, gather_rows, one_of, positive, to_int_tuple, to_size
from adcore.components import PCA, GaussianKDE, PooledFeatures

FEATURE_SCALING_METHODS = ("scale", "norm")


@attrs.define
class DfkdeConfig:
    backbone: str = "tf_efficientnet_lite0"
    layers: tuple[int, ...] = attrs.field(default=(4,), converter=to_int_tuple)
    image_size: tuple[int, int] = attrs.field(default=(256, 256), converter=to_size)
    n_pca_components: int = attrs.field(default=16, converter=int, validator=positive)
    feature_scaling_method: str = attrs.field(default="scale", validator=one_of(*FEATURE_SCALING_METHODS))
    max_training_points: int = attrs.field(default=40000, converter=int, validator=positive)
    threshold_steepness: float = attrs.field(default=0.05, converter=float, validator=positive)
    threshold_offset: float = attrs.field(default=12.0, converter=float)
    weights: str = "auto"


class Dfkde(AnomalyDetector):
    name = "dfkde"
    Config = DfkdeConfig

    def __init__(self, config: DfkdeConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        self.features = PooledFeatures(cfg.backbone, cfg.layers, weights=cfg.weights, kernel_size=None)
        self.pca = PCA(cfg.n_pca_components)
        self.kde = GaussianKDE()
        self.register_buffer("max_length", torch.ones(()))
        self._train_features: list[torch.Tensor] = []

    def scale(self, projections: torch.Tensor) -> torch.Tensor:
        """Step 3: bring projections to the scale the density was fitted at."""
        if self.config.feature_scaling_method == "norm":
            return projections / projections.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return projections / self.max_length

    def to_probability(self, log_density: torch.Tensor) -> torch.Tensor:
        """Step 5: a logistic map from log-density to anomaly probability."""
        cfg = self.config
        return torch.sigmoid(-cfg.threshold_steepness * (log_density.double() - cfg.threshold_offset)).float()

    # Several processes (adcore fit --nproc N) each embed a shard; the rows are gathered in order.
    supports_sharded_fit = True

    def fit_begin(self) -> None:
        self._train_features = []

    def combine_shards(self) -> None:
        self._train_features = [gather_rows(self._train_features)]

    def fit_batch(self, batch: Batch) -> None:
        self._train_features.append(self.features.global_vector(batch.image))

    def fit_end(self) -> None:
        features = torch.cat(self._train_features)
        self._train_features = []
        if features.shape[0] > self.config.max_training_points:
            keep = torch.randperm(features.shape[0], device=features.device)[: self.config.max_training_points]
            features = features[keep]
        # A KDE over k dimensions needs more than k samples, and n centred samples span at
        # most n - 1 directions: with very few images, use fewer components, loudly.
        n_components = self.config.n_pca_components
        if n_components > features.shape[0] - 1:
            n_components = features.shape[0] - 1
            warnings.warn(
                f"dfkde: {features.shape[0]} training images support at most {n_components} PCA components; "
                f"using {n_components} instead of n_pca_components={self.config.n_pca_components}",
                stacklevel=2,
            )
        self.pca = PCA(n_components).fit(features)
        projections = self.pca.transform(features)
        self.max_length = projections.norm(dim=1).max().clamp_min(1e-12)
        self.kde.fit(self.scale(projections))

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        projections = self.pca.transform(self.features.global_vector(images))
        score = self.to_probability(self.kde.log_density(self.scale(projections)))
        # No localisation in this method: the map is the image score everywhere.
        anomaly_map = score.view(-1, 1, 1, 1).expand(-1, 1, *images.shape[-2:]).contiguous()
        return DetectorOutput(pred_score=score, anomaly_map=anomaly_map)
