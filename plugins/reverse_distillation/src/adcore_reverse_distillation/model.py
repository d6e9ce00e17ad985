"""Reverse Distillation (Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class
Embedding", CVPR 2022), step by step as in the paper.

1. Teacher encoder E: a backbone pretrained on ImageNet, frozen. It gives feature maps at
   several levels (``layers``; the paper's ResNet layer1-3, here the backbone's stages at
   strides 4, 8, 16 by default). Its features are computed once per training image and
   cached across epochs (the images are not augmented).
2. One-class bottleneck embedding (OCBE), trainable:
   a. multi-scale feature fusion (MFF): every shallower level is brought to the deepest
      level's resolution by strided 3x3 convolutions (BN, ReLU), one per halving, whose widths
      follow the encoder's own channels; the results are concatenated with the deepest level;
   b. one-class embedding (OCE): a residual stage (a ResNet block with stride 2, like the
      encoder's next stage) turns the fused maps into a compact embedding, at twice the
      deepest stride. This low-dimensional code is what stops the student from simply copying
      anomalous teacher features: it can only carry what normal images need.
3. Student decoder D, trainable: the encoder's stages in reverse. Each decoder stage
   upsamples by the ratio of the encoder's strides (transposed convolutions in a residual
   block) and produces the channels of the matching encoder level, so decoder stage k
   reconstructs encoder level k from the embedding. The network is built from the feature
   extractor's ``channels`` and ``strides``, so any timm backbone with feature stages works.
4. Training (normal images only): per level and position, 1 - the cosine similarity between
   the teacher's and the student's feature vectors; the loss is the sum over levels of its
   mean (the paper's Eq. 2). ``flat_cosine_weight`` adds the official code's variant, 1 - the
   cosine of each level's whole flattened map. Adam (lr 0.005, betas (0.5, 0.999), the paper's)
   on the bottleneck and the decoder.
5. Anomaly map: each level's 1 - cos map, upsampled to the image, combined by
   ``map_fusion`` (``add``, the paper's sum, or ``multiply``), then Gaussian-blurred
   (sigma 4, as the paper). The image score is the map's maximum.
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
    at_least,
    create_feature_extractor,
    distinct_levels,
    non_negative,
    one_of,
    positive,
    to_int_tuple,
    to_size,
)
from adcore.components import gaussian_blur
from torch import nn

#: Adam's betas in the paper (and its official code): a short memory of the first moment.
ADAM_BETAS = (0.5, 0.999)


def _at_least_two_levels(_instance, attribute, value: tuple[int, ...]) -> None:
    distinct_levels(_instance, attribute, value)
    if len(value) < 2:
        raise ValueError(f"{attribute.name} needs at least 2 levels to fuse (the paper uses 3), got {value}")


def _optional_positive(_instance, attribute, value: int | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be > 0 (or null: twice the deepest level's channels), got {value}")


@attrs.define
class ReverseDistillationConfig:
    backbone: str = "tf_efficientnet_lite0"
    #: Encoder levels (timm feature indices), shallow to deep; lite0's 1, 2, 3 are strides
    #: 4, 8, 16 with 24, 40, 112 channels, the positions of the paper's ResNet layer1-3.
    layers: tuple[int, ...] = attrs.field(default=(1, 2, 3), converter=to_int_tuple, validator=_at_least_two_levels)
    image_size: tuple[int, int] = attrs.field(default=(256, 256), converter=to_size)
    #: Channels of the one-class embedding; None: twice the deepest level's (the paper's
    #: ResNet-50 bottleneck: 3 x 1024 fused channels -> 2048).
    embedding_channels: int | None = attrs.field(default=None, validator=_optional_positive)
    #: Residual blocks per decoder stage (the first one upsamples).
    decoder_blocks: int = attrs.field(default=1, validator=at_least(1))
    #: The paper trains 200 epochs on a GPU. On a CPU (MVTec bottle, lite0, 256 px), image / pixel
    #: AUROC after 2, 4, 6, 9 epochs: 0.924 / 0.959, 0.967 / 0.976, 0.991 / 0.979, 0.999 / 0.984.
    epochs: int = attrs.field(default=9, validator=positive)
    learning_rate: float = attrs.field(default=0.005, validator=positive)
    weight_decay: float = attrs.field(default=0.0, validator=non_negative)
    #: Weight of the official code's loss term: 1 - cosine of each level's flattened map.
    flat_cosine_weight: float = attrs.field(default=0.0, validator=non_negative)
    #: How the levels' maps combine: "add" (the paper's sum) or "multiply".
    map_fusion: str = attrs.field(default="add", validator=one_of("add", "multiply"))
    #: Sigma (pixels) of the Gaussian blur of the final map (the paper: 4; 0 turns it off).
    blur_sigma: float = attrs.field(default=4.0, validator=non_negative)
    weights: str = "auto"


def _halvings(coarse: int, fine: int) -> int:
    """log2 of the stride ratio coarse / fine; the networks resample by factors of two."""
    ratio = coarse // fine
    if coarse % fine or ratio < 1 or ratio & (ratio - 1):
        raise ValueError(
            f"reverse_distillation: the encoder's strides must grow by powers of two, got {fine} -> {coarse}"
        )
    return ratio.bit_length() - 1


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """A ResNet basic block: two 3x3 convolutions plus a shortcut.

    ``resample`` > 1 downsamples by that stride (the encoder direction); < -1 upsamples by its
    magnitude with transposed convolutions (the decoder direction, the paper's de-ResNet
    blocks). The shortcut is a projection whenever the shape changes. ``activate=False``
    leaves out the final ReLU: a stage whose output is compared with the teacher ends
    linear, because some encoders' features are signed (EfficientNet's stages end in a linear
    projection); the next stage starts with a ReLU of its input instead.
    """

    def __init__(self, in_channels: int, out_channels: int, resample: int = 1, activate: bool = True) -> None:
        super().__init__()
        if resample < -1:  # upsampling by -resample
            factor = -resample
            first = nn.ConvTranspose2d(in_channels, out_channels, factor, stride=factor, bias=False)
            shortcut = nn.ConvTranspose2d(in_channels, out_channels, factor, stride=factor, bias=False)
        else:
            stride = max(resample, 1)
            first = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
            same = stride == 1 and in_channels == out_channels
            shortcut = None if same else nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        self.branch = nn.Sequential(
            first,
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Identity() if shortcut is None else nn.Sequential(shortcut, nn.BatchNorm2d(out_channels))
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x) + self.shortcut(x)
        return F.relu(out) if self.activate else out


class OneClassBottleneck(nn.Module):
    """Step 2, OCBE: multi-scale feature fusion, then a residual stage to a compact embedding."""

    def __init__(self, channels: list[int], strides: list[int], embedding_channels: int) -> None:
        super().__init__()
        deepest = strides[-1]
        self.fusion = nn.ModuleList()
        fused = channels[-1]
        for level, (width, stride) in enumerate(zip(channels[:-1], strides[:-1])):
            steps = []
            for _ in range(_halvings(deepest, stride)):
                stride *= 2
                # The width at each resolution follows the encoder's: that of the first
                # chosen level at least this deep (the paper: 256 -> 512 -> 1024).
                out_width = next(c for c, s in zip(channels[level:], strides[level:]) if s >= stride)
                steps.append(_conv_bn_relu(width, out_width, stride=2))
                width = out_width
            if not steps:  # a level already at the deepest resolution: one 3x3 convolution
                steps.append(_conv_bn_relu(width, channels[-1], stride=1))
                width = channels[-1]
            self.fusion.append(nn.Sequential(*steps))
            fused += width
        self.embedding = ResidualBlock(fused, embedding_channels, resample=2)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        fused = [block(feature) for block, feature in zip(self.fusion, features[:-1])]
        return self.embedding(torch.cat([*fused, features[-1]], dim=1))


class ReverseDecoder(nn.Module):
    """Step 3: the encoder's stages in reverse, from the embedding back to every chosen level."""

    def __init__(self, channels: list[int], strides: list[int], embedding_channels: int, blocks: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        width, stride = embedding_channels, 2 * strides[-1]
        for out_width, out_stride in zip(reversed(channels), reversed(strides)):
            factor = 2 ** _halvings(stride, out_stride)
            stage = [ResidualBlock(width, out_width, resample=-factor if factor > 1 else 1, activate=blocks > 1)]
            stage += [ResidualBlock(out_width, out_width, activate=i < blocks - 2) for i in range(blocks - 1)]
            self.stages.append(nn.Sequential(*stage))
            width, stride = out_width, out_stride

    def forward(self, embedding: torch.Tensor) -> list[torch.Tensor]:
        """Reconstructed features, shallow to deep (the encoder's order)."""
        outputs, x = [], embedding
        for index, stage in enumerate(self.stages):
            x = stage(x if index == 0 else F.relu(x))
            outputs.append(x)
        return outputs[::-1]


def cosine_distance_maps(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per level, 1 - cos(teacher, student) at each position: (N, 1, h, w) in float32."""
    return [1.0 - F.cosine_similarity(t.float(), s.float(), dim=1).unsqueeze(1) for t, s in zip(teacher, student)]


def distillation_loss(
    teacher: list[torch.Tensor], student: list[torch.Tensor], flat_cosine_weight: float = 0.0
) -> torch.Tensor:
    """Step 4: sum over levels of the mean per-position 1 - cos (plus the flattened-map term)."""
    loss = sum(distance.mean() for distance in cosine_distance_maps(teacher, student))
    if flat_cosine_weight > 0:
        flat = sum(
            (1.0 - F.cosine_similarity(t.float().flatten(1), s.float().flatten(1), dim=1)).mean()
            for t, s in zip(teacher, student)
        )
        loss = loss + flat_cosine_weight * flat
    return loss


def fuse_maps(maps: list[torch.Tensor], size: tuple[int, int], fusion: str) -> torch.Tensor:
    """Step 5: each level's map upsampled (bilinear) to ``size``, then added or multiplied."""
    upsampled = torch.stack([F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps])
    return upsampled.sum(dim=0) if fusion == "add" else upsampled.prod(dim=0)


class ReverseDistillation(AnomalyDetector):
    name = "reverse_distillation"
    Config = ReverseDistillationConfig

    def __init__(self, config: ReverseDistillationConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        self.encoder = create_feature_extractor(cfg.backbone, cfg.layers, weights=cfg.weights, frozen=True)
        channels, strides = self.encoder.channels, self.encoder.strides
        if any(b <= a for a, b in itertools.pairwise(strides)):
            raise ValueError(f"layers {cfg.layers} of '{cfg.backbone}' must have increasing strides, got {strides}")
        self.embedding_stride = 2 * strides[-1]
        if any(side % self.embedding_stride for side in cfg.image_size):
            raise ValueError(
                f"image_size {tuple(cfg.image_size)} must be a multiple of {self.embedding_stride} "
                f"(twice the deepest stride of layers {cfg.layers}: the embedding's stride)"
            )
        embedding = cfg.embedding_channels or 2 * channels[-1]
        self.bottleneck = OneClassBottleneck(channels, strides, embedding)
        self.decoder = ReverseDecoder(channels, strides, embedding, cfg.decoder_blocks)
        # channels_last, like the encoder's features: oneDNN's native layout on CPUs.
        self.bottleneck.to(memory_format=torch.channels_last)
        self.decoder.to(memory_format=torch.channels_last)

    @property
    def training_spec(self) -> TrainingSpec:
        return TrainingSpec.gradient(self, epochs=self.config.epochs)

    def configure_optimizers(self, budget: Budget) -> torch.optim.Optimizer:
        cfg = self.config
        trainable = [*self.bottleneck.parameters(), *self.decoder.parameters()]
        return torch.optim.Adam(trainable, lr=cfg.learning_rate, betas=ADAM_BETAS, weight_decay=cfg.weight_decay)

    def check_images(self, images: torch.Tensor) -> None:
        super().check_images(images)
        if any(side % self.embedding_stride for side in images.shape[-2:]):
            raise ValueError(
                f"reverse_distillation: image sides must be multiples of {self.embedding_stride}, "
                f"got {tuple(images.shape[-2:])}"
            )

    def frozen_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        # Step 1: the teacher is frozen and the images are not augmented: training reads its
        # features through the per-image cache.
        return self.encoder(images)

    def reconstruct(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Steps 2-3: teacher features -> one-class embedding -> the student's features."""
        return self.decoder(self.bottleneck(features))

    def training_step(self, batch: Batch) -> torch.Tensor:
        teacher = self.training_features(batch)
        return distillation_loss(teacher, self.reconstruct(teacher), self.config.flat_cosine_weight)

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        teacher = self.encoder(images)
        maps = cosine_distance_maps(teacher, self.reconstruct(teacher))
        anomaly_map = fuse_maps(maps, tuple(images.shape[-2:]), self.config.map_fusion)
        return DetectorOutput.from_map(gaussian_blur(anomaly_map, self.config.blur_sigma))
