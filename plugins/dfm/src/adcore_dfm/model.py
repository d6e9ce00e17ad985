"""DFM (Ahuja et al. 2019, "Probabilistic Modeling of Deep Features for Out-of-Distribution
and Adversarial Detection"), step by step, with anomalib's options.

1. Deep features: one ``layer`` of an ImageNet-pretrained backbone, average-pooled over
   ``pooling_kernel_size`` x ``pooling_kernel_size`` windows and flattened to one vector
   per image (the layout is kept, so every vector entry belongs to a map position).
2. Fit a PCA on the training vectors, keeping the components that explain ``pca_level``
   of the variance (an int keeps that many components).
3. Class-conditional Gaussian: for the single normal class, a multivariate Gaussian on
   the PCA projections (fitted when ``score_type="nll"``, the score that needs it).
4. Score an image by either
   - ``"fre"``: the feature reconstruction error, the squared distance between the
     feature vector and its projection mapped back by the PCA, or
   - ``"nll"``: the negative log-likelihood of its projection under the Gaussian.
5. Anomaly map: the reconstruction error per map position (summed over channels),
   upsampled bilinearly to the image. With ``pooling_kernel_size=1`` that is the error
   of the un-pooled features at the layer's full resolution.
"""

from __future__ import annotations

import attrs
import torch
from adcore import AnomalyDetector, Batch, DetectorOutput, at_least, gather_rows, one_of, to_size
from adcore.components import PCA, MultivariateGaussian, PooledFeatures, UpsampleBlurMap

SCORE_TYPES = ("fre", "nll")
# The projections' covariance is diagonal with the kept (>= 3 % of the variance-level)
# PCA variances; this only guards the Cholesky factor against rounding.
GAUSSIAN_REGULARIZATION = 1e-6


def _to_pca_level(value) -> int | float:
    """0.97 -> a variance fraction; 16 or "16" -> a number of components."""
    number = float(value)
    return int(number) if number >= 1 and number.is_integer() else number


def _pca_level(_instance, attribute, value) -> None:
    """A variance fraction in (0, 1) or a component count >= 1 (the converter makes counts ints)."""
    if isinstance(value, float) and not 0 < value < 1:
        raise ValueError(
            f"{attribute.name} must be a variance fraction in (0, 1) or a component count >= 1, got {value}"
        )


@attrs.define
class DfmConfig:
    backbone: str = "tf_efficientnet_lite0"
    layer: int = attrs.field(default=3, converter=int)
    image_size: tuple[int, int] = attrs.field(default=(256, 256), converter=to_size)
    pooling_kernel_size: int = attrs.field(default=2, converter=int, validator=at_least(1))
    pca_level: int | float = attrs.field(default=0.97, converter=_to_pca_level, validator=_pca_level)
    score_type: str = attrs.field(default="fre", validator=one_of(*SCORE_TYPES))
    weights: str = "auto"


class Dfm(AnomalyDetector):
    name = "dfm"
    Config = DfmConfig

    def __init__(self, config: DfmConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        self.features = PooledFeatures(
            cfg.backbone, (cfg.layer,), weights=cfg.weights, kernel_size=cfg.pooling_kernel_size
        )
        self.pca = PCA(cfg.pca_level)
        self.gaussian = MultivariateGaussian(GAUSSIAN_REGULARIZATION)
        self.anomaly_map = UpsampleBlurMap(sigma=0.0)  # DFM does not smooth its map
        self._train_features: list[torch.Tensor] = []

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Step 1: pooled feature maps (N, C, h, w); flattened, they are the modelled vectors."""
        return self.features(images)[0]

    # Several processes (adcore fit --nproc N) each embed a shard; the rows are gathered in order.
    supports_sharded_fit = True

    def fit_begin(self) -> None:
        self._train_features = []

    def combine_shards(self) -> None:
        self._train_features = [gather_rows(self._train_features)]

    def fit_batch(self, batch: Batch) -> None:
        self._train_features.append(self.embed(batch.image).flatten(1))

    def fit_end(self) -> None:
        features = torch.cat(self._train_features)
        self._train_features = []
        self.pca.fit(features)
        if self.config.score_type == "nll":
            self.gaussian.fit(self.pca.transform(features))

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        embedding = self.embed(images)
        vectors = embedding.flatten(1)
        projections = self.pca.transform(vectors)
        squared_error = (vectors - self.pca.inverse_transform(projections)).square().view_as(embedding)
        error_map = squared_error.sum(dim=1, keepdim=True)  # (N, 1, h, w)
        if self.config.score_type == "fre":
            score = error_map.flatten(1).sum(dim=1)
        else:
            score = self.gaussian.negative_log_likelihood(projections)
        return DetectorOutput(pred_score=score, anomaly_map=self.anomaly_map(error_map, images.shape[-2:]))
