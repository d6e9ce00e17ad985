"""R-KDE: region-based kernel density estimation, as anomalib implements it.

The paper ("Region Based Anomaly Detection With Real-Time Training and Analysis", ICMLA 2019)
scores *regions* of an image, not pixels or whole images. Step by step:

1. **Regions.** A region extractor proposes boxes with a confidence
   (:mod:`adcore_rkde.regions`): by default a dense multi-scale grid ranked by the ImageNet
   backbone's feature energy (offline, no detector weights); or a torchvision Faster R-CNN
   read from a weights file, at its region-proposal (``roi_stage="rpn"``) or detection
   (``roi_stage="detection"``) stage, as in the paper.
2. **Filtering.** Boxes smaller than ``min_box_size`` pixels, or less confident than
   ``confidence_threshold``, are dropped; non-maximum suppression at ``iou_threshold``
   removes near-duplicates; the ``max_detections_per_image`` most confident remain.
3. **Region features.** Each box is RoI-aligned (``roi_output_size`` x ``roi_output_size``
   cells) on the chosen ``layers`` of a frozen ImageNet backbone, flattened and
   concatenated: one vector per region (the paper uses the R-CNN's own fc features).
4. **Fit.** The regions of all training images (a seeded random subset of
   ``max_training_points`` beyond that) fit a PCA keeping ``n_pca_components``; the
   projections are scaled (``feature_scaling_method``: ``scale`` divides by the largest
   training length, ``norm`` makes every vector unit length) and a Gaussian KDE (Scott's
   bandwidth) is fitted on them.
5. **Score.** A region's anomaly score is its negative log-density under the KDE (rare
   regions score high). The image score is the largest region score. The anomaly map
   paints each region's score over its pixels (the largest where regions overlap) on a
   background of the lowest score seen on the training regions, so pixel metrics say how
   well the anomalous regions are found. Boxes and scores also go out as
   ``DetectorOutput.regions``: one (K, 5) tensor per image, rows ``x0, y0, x1, y1, score``.
"""

from __future__ import annotations

import warnings

import attrs
import torch
from adcore import (
    AnomalyDetector,
    Batch,
    DetectorOutput,
    InputSpec,
    at_least,
    create_feature_extractor,
    load_weights_file,
    one_of,
    positive,
    resolve_resource,
    to_int_tuple,
    to_size,
    unit_interval,
)
from adcore.components import PCA, GaussianKDE, roi_features

from adcore_rkde.regions import (
    FASTER_RCNN_ARCHITECTURES,
    FasterRcnnRegions,
    GridRegions,
    build_faster_rcnn,
    filter_regions,
    paint_regions,
)

REGION_SOURCES = ("grid", "faster_rcnn")
ROI_STAGES = ("rpn", "detection")
FEATURE_SCALING_METHODS = ("scale", "norm")


def to_float_tuple(value) -> tuple[float, ...]:
    """``0.25``, ``"0.25,0.5"`` or ``[0.25, 0.5]`` -> ``(0.25, 0.5)``."""
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    elif isinstance(value, (int, float)):
        value = [value]
    return tuple(float(v) for v in value)


def _scales_in_unit_interval(instance, attribute, value) -> None:
    if not value or not all(0.0 < v <= 1.0 for v in value):
        raise ValueError(f"{attribute.name} must be fractions of the image side in (0, 1], got {value}")


def _overlap(instance, attribute, value) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{attribute.name} must be in [0, 1), got {value}")


@attrs.define
class RkdeConfig:
    backbone: str = "tf_efficientnet_lite0"
    layers: tuple[int, ...] = attrs.field(default=(3,), converter=to_int_tuple)
    image_size: tuple[int, int] = attrs.field(default=(256, 256), converter=to_size)
    weights: str = "auto"
    region_source: str = attrs.field(default="grid", validator=one_of(*REGION_SOURCES))
    grid_scales: tuple[float, ...] = attrs.field(
        default=(0.25, 0.375, 0.5), converter=to_float_tuple, validator=_scales_in_unit_interval
    )
    grid_overlap: float = attrs.field(default=0.5, converter=float, validator=_overlap)
    roi_stage: str = attrs.field(default="detection", validator=one_of(*ROI_STAGES))
    detector_architecture: str = attrs.field(
        default="fasterrcnn_resnet50_fpn", validator=one_of(*FASTER_RCNN_ARCHITECTURES)
    )
    detector_weights: str = ""
    min_box_size: float = attrs.field(default=25.0, converter=float, validator=at_least(0))
    iou_threshold: float = attrs.field(default=0.7, converter=float, validator=unit_interval)
    confidence_threshold: float = attrs.field(default=0.001, converter=float, validator=unit_interval)
    max_detections_per_image: int = attrs.field(default=100, converter=int, validator=positive)
    roi_output_size: int = attrs.field(default=1, converter=int, validator=positive)
    n_pca_components: int = attrs.field(default=16, converter=int, validator=positive)
    feature_scaling_method: str = attrs.field(default="scale", validator=one_of(*FEATURE_SCALING_METHODS))
    max_training_points: int = attrs.field(default=40000, converter=int, validator=positive)


class Rkde(AnomalyDetector):
    name = "rkde"
    Config = RkdeConfig

    def __init__(self, config: RkdeConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        self.feature_extractor = create_feature_extractor(cfg.backbone, cfg.layers, weights=cfg.weights)
        self.region_detector_source = ""
        if cfg.region_source == "faster_rcnn":
            # A large frozen network from a file the user names: recorded by checkpoints, not copied.
            resolved = resolve_resource(
                f"torchvision:{cfg.detector_architecture}",
                cfg.detector_weights or None,
                load_path=load_weights_file,
                hint="pass the Faster R-CNN weights with --param detector_weights=FILE (a torchvision state_dict), "
                "or use the offline default --param region_source=grid",
            )
            model = build_faster_rcnn(cfg.detector_architecture, resolved.value)
            self.region_detector = FasterRcnnRegions(model, cfg.roi_stage, cfg.confidence_threshold, cfg.iou_threshold)
            self.region_detector_source = resolved.source
        else:
            self.region_detector = GridRegions(cfg.grid_scales, cfg.grid_overlap)
        self.pca = PCA(cfg.n_pca_components)
        self.kde = GaussianKDE()
        self.register_buffer("max_length", torch.ones(()))
        self.register_buffer("background", torch.zeros(()))  # the map where no region is
        self._train_features: list[torch.Tensor] = []

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.config.image_size, self.feature_extractor.mean, self.feature_extractor.std)

    def external_modules(self) -> dict[str, str]:
        return {"region_detector": self.region_detector_source} if self.region_detector_source else {}

    # -- steps 1-3: regions and their features ---------------------------------------------------
    def regions(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Filtered boxes per image (K_i, 4) and their features (sum K_i, D)."""
        cfg = self.config
        image_size = tuple(images.shape[-2:])
        features = self.feature_extractor(images)
        strides = self.feature_extractor.strides
        if cfg.region_source == "grid":
            boxes, confidences = self.region_detector(features, strides, image_size)
        else:
            mean = torch.tensor(self.feature_extractor.mean, device=images.device).view(1, 3, 1, 1)
            std = torch.tensor(self.feature_extractor.std, device=images.device).view(1, 3, 1, 1)
            boxes, confidences = self.region_detector((images.float() * std + mean).clamp(0, 1))
        kept = [
            filter_regions(
                b,
                c,
                image_size,
                cfg.min_box_size,
                cfg.confidence_threshold,
                cfg.iou_threshold,
                cfg.max_detections_per_image,
            )[0]
            for b, c in zip(boxes, confidences, strict=True)
        ]
        return kept, roi_features(features, strides, kept, cfg.roi_output_size)

    # -- step 4: fit ---------------------------------------------------------------------------------
    def scale(self, projections: torch.Tensor) -> torch.Tensor:
        """Bring projections to the scale the density was fitted at."""
        if self.config.feature_scaling_method == "norm":
            return projections / projections.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return projections / self.max_length

    def fit_begin(self) -> None:
        self._train_features = []

    def fit_batch(self, batch: Batch) -> None:
        self._train_features.append(self.regions(batch.image)[1])

    def fit_end(self) -> None:
        features = torch.cat(self._train_features) if self._train_features else torch.empty(0, 0)
        self._train_features = []
        if features.shape[0] < 3:
            raise ValueError(
                f"rkde: {features.shape[0]} training regions; need at least 3 (no training images, or every "
                "region filtered out: lower min_box_size or confidence_threshold)"
            )
        if features.shape[0] > self.config.max_training_points:
            keep = torch.randperm(features.shape[0], device=features.device)[: self.config.max_training_points]
            features = features[keep]
        # A KDE over k dimensions needs more than k samples, n centred samples span n - 1 directions.
        n_components = min(self.config.n_pca_components, features.shape[0] - 2, features.shape[1])
        if n_components < self.config.n_pca_components:
            warnings.warn(
                f"rkde: {features.shape[0]} training regions of dimension {features.shape[1]} support at most "
                f"{n_components} PCA components; using {n_components} instead of "
                f"n_pca_components={self.config.n_pca_components}",
                stacklevel=2,
            )
        self.pca = PCA(n_components).fit(features)
        projections = self.pca.transform(features)
        self.max_length = projections.norm(dim=1).max().clamp_min(1e-12)
        scaled = self.scale(projections)
        self.kde.fit(scaled)
        self.background = (-self.kde.log_density(scaled)).min()

    # -- step 5: score ------------------------------------------------------------------------------
    def region_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Negative log-density of region features (R, D): higher = rarer."""
        if features.shape[0] == 0:
            return features.new_zeros(0)
        return -self.kde.log_density(self.scale(self.pca.transform(features)))

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        boxes, features = self.regions(images)
        scores = self.region_scores(features).split([len(b) for b in boxes])
        image_size = tuple(images.shape[-2:])
        regions = [torch.cat([b, s.view(-1, 1)], dim=1) for b, s in zip(boxes, scores, strict=True)]
        maps = torch.stack([paint_regions(r, image_size, self.background) for r in regions]).unsqueeze(1)
        pred_score = torch.stack([s.max() if s.numel() else self.background.float() for s in scores])
        return DetectorOutput(pred_score=pred_score, anomaly_map=maps, regions=regions)
