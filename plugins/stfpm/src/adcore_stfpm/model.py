"""STFPM (Wang et al. 2021), step by step as in the paper.

1. Teacher: a backbone pretrained on ImageNet, frozen (its features are computed once
   and cached across epochs). Student: the same architecture,
   randomly initialised (that is the method, not a fallback), trained on normal images.
2. Loss: at each pyramid level, channel-wise L2-normalise both feature maps and take half
   the squared distance per position, averaged over positions; sum over levels.
3. Anomaly map: per level the same per-position distance, upsampled to the image; the
   levels are multiplied (the paper's choice; ``map_fusion="sum"`` adds instead). The
   image score is the map's maximum.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from adcore import (
    RANDOM_INIT,
    AnomalyDetector,
    Batch,
    Budget,
    DetectorOutput,
    TrainingSpec,
    create_feature_extractor,
    one_of,
    to_int_tuple,
    to_size,
)


@attrs.define
class StfpmConfig:
    backbone: str = "tf_efficientnet_lite0"
    layers: tuple[int, ...] = attrs.field(default=(1, 2, 3), converter=to_int_tuple)
    image_size: tuple[int, int] = attrs.field(default=(256, 256), converter=to_size)
    epochs: int = 15
    learning_rate: float = 0.4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    map_fusion: str = attrs.field(default="product", validator=one_of("product", "sum"))
    weights: str = "auto"


def _normalized_distance(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Half the squared distance of channel-normalised features, per position: (N, 1, h, w)."""
    difference = F.normalize(teacher.float(), dim=1) - F.normalize(student.float(), dim=1)
    return 0.5 * difference.square().sum(dim=1, keepdim=True)


class Stfpm(AnomalyDetector):
    name = "stfpm"
    Config = StfpmConfig

    def __init__(self, config: StfpmConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        self.teacher = create_feature_extractor(cfg.backbone, cfg.layers, weights=cfg.weights, frozen=True)
        self.student = create_feature_extractor(cfg.backbone, cfg.layers, weights=RANDOM_INIT, frozen=False)

    @property
    def training_spec(self) -> TrainingSpec:
        return TrainingSpec.gradient(self, epochs=self.config.epochs)

    def configure_optimizers(self, budget: Budget) -> torch.optim.Optimizer:
        cfg = self.config
        return torch.optim.SGD(
            self.student.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )

    def frozen_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        # The teacher is frozen and images are not augmented: training reads its features
        # through the per-image cache (they were about 40 % of an epoch's time on a CPU).
        return self.teacher(images)

    def training_step(self, batch: Batch) -> torch.Tensor:
        teacher_features = self.training_features(batch)
        student_features = self.student(batch.image)
        return sum(_normalized_distance(t, s).mean() for t, s in zip(teacher_features, student_features))

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        size = images.shape[-2:]
        maps = [
            F.interpolate(_normalized_distance(t, s), size=size, mode="bilinear", align_corners=False)
            for t, s in zip(self.teacher(images), self.student(images))
        ]
        anomaly_map = (
            torch.stack(maps).prod(dim=0) if self.config.map_fusion == "product" else torch.stack(maps).sum(dim=0)
        )
        return DetectorOutput.from_map(anomaly_map)
