"""AI-VAD: attribute-based representations for video anomaly detection.

Reiss and Hoshen, "Attribute-based Representations for Accurate and Interpretable Video
Anomaly Detection" (2022). An unusual event is an object that moves unusually fast or in
an unusual direction, stands in an unusual pose, or looks unusual; AI-VAD describes every
object of a frame by those three attributes and scores each by how rare it is among the
objects of the normal training videos. Step by step, for each clip (by default the scored
frame and the one before it, ``clip_length=2``):

1. **Regions** (:mod:`adcore_ai_vad.regions`): the objects of the scored (last) frame.
   Offline default: background subtraction against the median of training frames
   (``region_source=background``); as in the paper: a torchvision Mask R-CNN
   (``region_source=mask_rcnn`` with ``region_weights=FILE``).
2. **Velocity**: optical flow from the clip's first to its last frame (OpenCV Farneback or
   DIS offline; RAFT with ``flow_weights=FILE``), summarised per region as a histogram of
   flow orientations in ``velocity_bins`` sectors (8 in the paper), each bin the mean
   magnitude of the flow pointing that way.
3. **Pose**: body keypoints from a Keypoint R-CNN's keypoint head on the region's box, relative
   to the box (``pose_source=keypoint_rcnn`` with ``pose_weights=FILE``). No such weights
   exist offline, so the default skips pose, and says so once.
4. **Deep features**: an appearance embedding of the region: RoI-aligned features of the
   offline ImageNet backbone (default) or a CLIP image embedding of the crop (``deep_source=clip``).
5. **Densities** (:mod:`adcore_ai_vad.density`), fitted on all regions of the training clips:
   a GMM (``n_components_velocity``) for velocity, grouped kNN (the training videos are the
   groups) for pose and deep features. Each type's score is min-max normalised with
   training statistics.
6. **Scores**: a region's score is the sum of its normalised per-type scores; the frame's
   score is the largest region score (0, the normal minimum, when there is no object). The
   regions go out with their scores (``DetectorOutput.regions``) and are painted into the
   anomaly map.

The paper also smooths frame scores over time before evaluating; adcore scores frames
independently (no temporal smoothing).
"""

from __future__ import annotations

import warnings

import attrs
import torch
from adcore import (
    AnomalyDetector,
    DetectorOutput,
    InputSpec,
    Pass,
    TrainingSpec,
    VideoBatch,
    at_least,
    create_feature_extractor,
    load_weights_file,
    one_of,
    positive,
    resolve_resource,
    to_bool,
    to_int_tuple,
    to_size,
    unit_interval,
)
from adcore.components import roi_features

from adcore_ai_vad.density import GmmDensity, GroupedKnn
from adcore_ai_vad.features import (
    FLOW_METHODS,
    KeypointPose,
    OpenCvFlow,
    RaftFlow,
    build_clip,
    build_raft,
    velocity_histograms,
)
from adcore_ai_vad.regions import (
    KEYPOINT_RCNN_ARCHITECTURES,
    MASK_RCNN_ARCHITECTURES,
    BackgroundRegions,
    MaskRcnnRegions,
    build_detection_model,
)

REGION_SOURCES = ("background", "mask_rcnn")
DEEP_SOURCES = ("backbone", "clip")
POSE_SOURCES = ("none", "keypoint_rcnn")
FEATURE_TYPES = ("velocity", "pose", "deep")

POSE_SKIPPED = (
    "ai-vad: pose features skipped (no Keypoint R-CNN weights offline); velocity and deep features only. "
    "Use them with --param pose_source=keypoint_rcnn --param pose_weights=FILE"
)


@attrs.define
class AiVadConfig:
    image_size: tuple[int, int] = attrs.field(default=(240, 320), converter=to_size)
    clip_length: int = attrs.field(default=2, converter=int, validator=at_least(2))
    frame_stride: int = attrs.field(default=1, converter=int, validator=positive)
    # regions
    region_source: str = attrs.field(default="background", validator=one_of(*REGION_SOURCES))
    region_architecture: str = attrs.field(default="maskrcnn_resnet50_fpn", validator=one_of(*MASK_RCNN_ARCHITECTURES))
    region_weights: str = ""
    confidence_threshold: float = attrs.field(default=0.8, converter=float, validator=unit_interval)
    background_frames: int = attrs.field(default=64, converter=int, validator=at_least(3))
    foreground_threshold: float = attrs.field(default=25.0, converter=float, validator=at_least(0))
    foreground_kernel_size: int = attrs.field(default=7, converter=int, validator=positive)
    min_region_area: int = attrs.field(default=100, converter=int, validator=at_least(1))
    max_regions: int = attrs.field(default=50, converter=int, validator=positive)
    # velocity
    use_velocity_features: bool = attrs.field(default=True, converter=to_bool)
    flow_source: str = attrs.field(default="farneback", validator=one_of(*FLOW_METHODS))
    flow_weights: str = ""
    velocity_bins: int = attrs.field(default=8, converter=int, validator=positive)
    n_components_velocity: int = attrs.field(default=5, converter=int, validator=positive)
    # deep features
    use_deep_features: bool = attrs.field(default=True, converter=to_bool)
    deep_source: str = attrs.field(default="backbone", validator=one_of(*DEEP_SOURCES))
    backbone: str = "tf_efficientnet_lite0"
    layers: tuple[int, ...] = attrs.field(default=(2, 3), converter=to_int_tuple)
    weights: str = "auto"
    roi_output_size: int = attrs.field(default=1, converter=int, validator=positive)
    clip_model: str = "ViT-B-16"
    clip_weights: str = ""
    n_neighbors_deep: int = attrs.field(default=1, converter=int, validator=positive)
    # pose
    pose_source: str = attrs.field(default="none", validator=one_of(*POSE_SOURCES))
    pose_architecture: str = attrs.field(
        default="keypointrcnn_resnet50_fpn", validator=one_of(*KEYPOINT_RCNN_ARCHITECTURES)
    )
    pose_weights: str = ""
    n_neighbors_pose: int = attrs.field(default=1, converter=int, validator=positive)
    # memory
    max_bank_per_video: int = attrs.field(default=2000, converter=int, validator=positive)
    max_training_regions: int = attrs.field(default=100000, converter=int, validator=positive)


def _torchvision_resource(name: str, path: str, parameter: str, offline: str):
    return resolve_resource(
        f"torchvision:{name}",
        path or None,
        load_path=load_weights_file,
        hint=f"pass the {name} weights with --param {parameter}=FILE (a torchvision state_dict), or use {offline}",
    )


class AiVad(AnomalyDetector):
    name = "ai-vad"
    Config = AiVadConfig
    size_multiple = 16

    def __init__(self, config: AiVadConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        if not (cfg.use_velocity_features or cfg.use_deep_features or cfg.pose_source != "none"):
            raise ValueError("enable at least one feature type (velocity, deep or pose)")
        self._sources: dict[str, str] = {}
        # 1. regions
        if cfg.region_source == "mask_rcnn":
            resolved = _torchvision_resource(
                cfg.region_architecture, cfg.region_weights, "region_weights", "--param region_source=background"
            )
            model = build_detection_model(cfg.region_architecture, resolved.value)
            self.region_detector = MaskRcnnRegions(
                model, cfg.confidence_threshold, cfg.min_region_area, cfg.max_regions
            )
            self._sources["region_detector"] = resolved.source
        else:
            self.region_detector = BackgroundRegions(
                cfg.foreground_threshold, cfg.min_region_area, cfg.foreground_kernel_size, cfg.max_regions
            )
        # 2. velocity
        if cfg.use_velocity_features:
            if cfg.flow_source.startswith("raft"):
                resolved = _torchvision_resource(
                    cfg.flow_source, cfg.flow_weights, "flow_weights", "--param flow_source=farneback"
                )
                self.flow = RaftFlow(build_raft(cfg.flow_source, resolved.value))
                self._sources["flow"] = resolved.source
            else:
                self.flow = OpenCvFlow(cfg.flow_source)
            self.velocity_density = GmmDensity(cfg.n_components_velocity, seed=0)
        # 3. pose
        if cfg.pose_source == "keypoint_rcnn":
            resolved = _torchvision_resource(
                cfg.pose_architecture, cfg.pose_weights, "pose_weights", "--param pose_source=none"
            )
            self.pose = KeypointPose(build_detection_model(cfg.pose_architecture, resolved.value))
            self._sources["pose"] = resolved.source
            self.pose_density = GroupedKnn(cfg.n_neighbors_pose, cfg.max_bank_per_video)
        else:
            warnings.warn(POSE_SKIPPED, stacklevel=2)
        # 4. deep features
        self.feature_extractor = create_feature_extractor(cfg.backbone, cfg.layers, weights=cfg.weights)
        if cfg.use_deep_features:
            if cfg.deep_source == "clip":
                if not cfg.clip_weights:
                    raise ValueError(
                        f"deep_source=clip needs CLIP weights: --param clip_weights=FILE (open_clip {cfg.clip_model}), "
                        "or use --param deep_source=backbone"
                    )
                self.clip = build_clip(cfg.clip_model, cfg.clip_weights)
                self._sources["clip"] = f"path:{cfg.clip_weights}"
            self.deep_density = GroupedKnn(cfg.n_neighbors_deep, cfg.max_bank_per_video)
        self._reservoir: list[torch.Tensor] = []
        self._seen = 0
        self._train: dict[str, list] = {}

    # -- description -------------------------------------------------------------------------
    @property
    def input_spec(self) -> InputSpec:
        fe = self.feature_extractor
        return InputSpec(self.config.image_size, fe.mean, fe.std, self.config.clip_length, self.config.frame_stride)

    @property
    def feature_types(self) -> tuple[str, ...]:
        cfg = self.config
        used = {"velocity": cfg.use_velocity_features, "pose": cfg.pose_source != "none", "deep": cfg.use_deep_features}
        return tuple(name for name in FEATURE_TYPES if used[name])

    @property
    def training_spec(self) -> TrainingSpec:
        phases = [Pass("fit", self.fit_batch)]
        if self.config.region_source == "background":
            phases.insert(0, Pass("background", self.background_batch, self.background_end))
        return TrainingSpec(tuple(phases))

    def external_modules(self) -> dict[str, str]:
        return dict(self._sources)

    def check_images(self, images: torch.Tensor) -> None:
        length = self.config.clip_length
        if images.ndim != 5 or images.shape[1] != length or images.shape[2] != 3:
            raise ValueError(
                f"{self.name}: expected clips of shape (N, {length}, 3, H, W) (a video detector), got {tuple(images.shape)}"
            )
        if not torch.isfinite(images).all():
            raise ValueError(f"{self.name}: clips contain NaN or infinite values")

    def predict(self, images) -> DetectorOutput:
        if isinstance(images, VideoBatch):
            images = images.frames
        return super().predict(images)

    def pixels(self, normalised: torch.Tensor) -> torch.Tensor:
        """Undo the input normalisation: frames in 0..1."""
        spec = self.input_spec
        mean = torch.tensor(spec.mean, device=normalised.device).view(3, 1, 1)
        std = torch.tensor(spec.std, device=normalised.device).view(3, 1, 1)
        return (normalised.float() * std + mean).clamp(0, 1)

    # -- step 1 offline: the background ----------------------------------------------------------
    def fit_begin(self) -> None:
        self._reservoir, self._seen = [], 0
        self._train = {name: [] for name in (*self.feature_types, "video")}

    def background_batch(self, batch: VideoBatch) -> None:
        """A uniform random reservoir of training frames (Algorithm R; draws from the seeded global generator)."""
        size = self.config.background_frames
        for frame in (self.pixels(batch.image) * 255).round().to(torch.uint8).cpu():
            if len(self._reservoir) < size:
                self._reservoir.append(frame)
            else:
                slot = int(torch.randint(self._seen + 1, ()))
                if slot < size:
                    self._reservoir[slot] = frame
            self._seen += 1

    def background_end(self) -> None:
        if not self._reservoir:
            raise ValueError("ai-vad: no training frames to learn the background from")
        self.region_detector.set_background(torch.stack(self._reservoir).float() / 255)
        self._reservoir = []

    # -- steps 1-4: regions and their attributes -------------------------------------------------
    def attributes(self, clips: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Clips (N, T, 3, H, W), normalised -> boxes per frame and features per type (sum K_i, D)."""
        last = self.pixels(clips[:, -1])
        boxes = self.region_detector(last)
        features: dict[str, torch.Tensor] = {}
        if self.config.use_velocity_features:
            flow = self.flow(self.pixels(clips[:, 0]), last)
            per_frame = [velocity_histograms(f, b, self.config.velocity_bins) for f, b in zip(flow, boxes, strict=True)]
            features["velocity"] = torch.cat(per_frame)
        if self.config.pose_source != "none":
            features["pose"] = self.pose(last, boxes)
        if self.config.use_deep_features:
            if self.config.deep_source == "clip":
                features["deep"] = self.clip(last, boxes)
            else:
                maps = self.feature_extractor(clips[:, -1])
                features["deep"] = roi_features(
                    maps, self.feature_extractor.strides, boxes, self.config.roi_output_size
                )
        return boxes, features

    # -- step 5: fit the densities ---------------------------------------------------------------
    def fit_batch(self, batch: VideoBatch) -> None:
        if batch.frames is None:
            raise ValueError("ai-vad: training data must be video clips (VideoBatch with frames)")
        boxes, features = self.attributes(batch.frames)
        videos = batch.video or [p for p in batch.path]
        self._train["video"] += [v for v, b in zip(videos, boxes, strict=True) for _ in range(len(b))]
        for name, value in features.items():
            self._train[name].append(value.detach().cpu())

    def fit_end(self) -> None:
        videos = self._train.pop("video", [])
        features = {name: torch.cat(parts) if parts else None for name, parts in self._train.items()}
        self._train = {}
        if len(videos) < 2:
            raise ValueError(
                f"ai-vad: {len(videos)} regions found in the training clips; need at least 2 "
                "(no moving objects? lower foreground_threshold or min_region_area)"
            )
        device = self.is_fitted.device
        # The seeded global generator decides every random choice of the fit.
        generator = torch.Generator().manual_seed(int(torch.randint(2**31 - 1, ())))
        if "velocity" in features:
            velocity = features["velocity"]
            if velocity.shape[0] > self.config.max_training_regions:
                velocity = velocity[
                    torch.randperm(velocity.shape[0], generator=generator)[: self.config.max_training_regions]
                ]
            self.velocity_density.gmm.seed = int(torch.randint(2**31 - 1, (), generator=generator))
            self.velocity_density.fit(velocity)
        names = sorted(set(videos))
        index = torch.tensor([names.index(v) for v in videos])
        for name in ("pose", "deep"):
            if name in features:
                groups = {video: features[name][index == i] for i, video in enumerate(names)}
                getattr(self, f"{name}_density").fit(groups, generator)
        self.to(device)

    # -- step 6: score ---------------------------------------------------------------------------
    def scores_by_type(self, clips: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, list[torch.Tensor]]]:
        """Boxes per frame and, per feature type, the normalised region scores per frame."""
        boxes, features = self.attributes(clips)
        counts = [len(b) for b in boxes]
        scores = {}
        for name, value in features.items():
            density = getattr(self, f"{name}_density")
            region = density(value) if value.shape[0] else value.new_zeros(0)
            scores[name] = list(region.float().split(counts))
        return boxes, scores

    def forward(self, clips: torch.Tensor) -> DetectorOutput:
        boxes, scores = self.scores_by_type(clips)
        height, width = clips.shape[-2:]
        regions, frame_scores, maps = [], [], []
        for i, frame_boxes in enumerate(boxes):
            total = sum(scores[name][i] for name in scores)
            if not torch.is_tensor(total):
                total = frame_boxes.new_zeros(len(frame_boxes))
            regions.append(torch.cat([frame_boxes.float(), total.view(-1, 1)], dim=1))
            frame_scores.append(total.max() if total.numel() else total.new_zeros(()))
            maps.append(paint(regions[-1], height, width))
        return DetectorOutput(
            pred_score=torch.stack(frame_scores), anomaly_map=torch.stack(maps).unsqueeze(1), regions=regions
        )


def paint(regions: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(K, 5) scored boxes -> (H, W): the largest score of the boxes covering a pixel, 0 elsewhere."""
    canvas = regions.new_zeros(height, width)
    for x0, y0, x1, y1, score in regions.tolist():
        x0, y0 = max(round(x0), 0), max(round(y0), 0)
        x1, y1 = min(round(x1), width), min(round(y1), height)
        if x1 > x0 and y1 > y0:
            canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1].clamp_min(score)
    return canvas
