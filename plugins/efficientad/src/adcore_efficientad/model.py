"""EfficientAD (Batzner, Heckler and König, WACV 2024), step by step as in the paper.

1. Teacher: a patch description network (PDN, :mod:`adcore_efficientad.pdn`), four (S)
   or six (M) convolutions whose every output feature describes one 33x33 patch. It was
   distilled beforehand from an ImageNet backbone; here it comes from the resource
   ``efficientad:pdn_small`` / ``efficientad:pdn_medium`` (the ``adcore-weights-pdn-teachers``
   plugin) or from a file (``teacher_weights=FILE``). It stays frozen. A first pass over
   the training images measures each teacher channel's mean and standard deviation; the
   teacher's features are used normalised by them.
2. Student: a PDN of the same size with twice the channels, from scratch. Its first half
   imitates the teacher, its second half imitates the autoencoder.
3. Autoencoder: strided convolutions down to a 64-d code for the whole image, then
   bilinear upsampling and convolutions back to the teacher's channels and output size. It
   must reconstruct the teacher's features of the whole image through that bottleneck, so
   it learns the logical layout of normal images, not the local look of patches.
4. Losses, every step (Adam, lr 1e-4, weight decay 1e-5, lr divided by 10 after 95 % of
   the steps):
   * hard-feature loss: squared teacher-student differences, averaged only over those at
     or above their 0.999 quantile in the batch (``hard_feature_quantile``), so the student
     spends its capacity on the patches it imitates worst and does not learn to generalise
     to everything;
   * penalty: the mean squared student output (first half) on natural images (an
     auxiliary stream, ``penalty_images=DIR``; without one the penalty is skipped and the
     log says so once), which keeps the student from imitating the teacher out of
     distribution;
   * autoencoder loss: autoencoder vs teacher on an augmented copy of the image (random
     brightness, contrast or saturation, factor 0.8-1.2);
   * student-autoencoder loss: the student's second half vs the autoencoder on that copy.
5. After training, a pass over held-out normal images (10 % of the training images) takes
   the 0.9 and 0.995 quantiles (q_a, q_b) of the local map (teacher vs student) and the
   global map (autoencoder vs student's second half). Each map is rescaled linearly so q_a
   -> 0 and q_b -> 0.1, which puts both on one scale before they are averaged.
6. Anomaly map: the average of the two normalised maps, padded by one 4-pixel cell around
   the PDN's output grid and resized to the image. Image score: the map's maximum.

Inference runs teacher, student and autoencoder once; with ``--precision bf16`` it runs
under bfloat16 autocast in channels_last (oneDNN/AMX), the fast path on recent CPUs.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from adcore import (
    AnomalyDataset,
    AnomalyDetector,
    Batch,
    Budget,
    DetectorOutput,
    Pass,
    ResourceNotFoundError,
    Stage,
    TrainingSpec,
    load_weights_file,
    one_of,
    positive,
    resolve_resource,
    to_size,
    unit_interval,
)
from torch import nn

from adcore_efficientad.pdn import pdn, pdn_output_size

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the paper's quantiles of the held-out maps, and the values they are mapped to
QUANTILE_A, QUANTILE_B = 0.9, 0.995
#: one 4-pixel cell of the PDN's output grid: padding that lines the map up with the image
MAP_PADDING = 4


@attrs.define
class EfficientAdConfig:
    model_size: str = attrs.field(default="small", validator=one_of("small", "medium"))
    image_size: tuple[int, int] = attrs.field(default=(256, 256), converter=to_size)
    #: optimizer steps; 140 x the CLI's batch 16 is about 20 min of fitting on an idle 2-core AMX CPU (estimated)
    steps: int = attrs.field(default=140, validator=positive)
    learning_rate: float = attrs.field(default=1e-4, validator=positive)
    weight_decay: float = 1e-5
    hard_feature_quantile: float = attrs.field(default=0.999, validator=unit_interval)
    #: a folder of natural images for the penalty loss ("" : the resource images:natural, else none)
    penalty_images: str = ""
    #: a teacher PDN state dict (.safetensors or .pt) instead of the packaged one
    teacher_weights: str = ""
    held_out_fraction: float = attrs.field(default=0.1, validator=unit_interval)


# --------------------------------------------------------------------------------------------
# pieces of the method, small enough to test by hand


def hard_feature_loss(distances: torch.Tensor, quantile: float) -> torch.Tensor:
    """Mean of the elements at or above the ``quantile`` of ``distances`` (torch.quantile's
    linear interpolation), found with two ``kthvalue`` calls so any tensor size works."""
    flat = distances.flatten().float()
    position = quantile * (flat.numel() - 1)
    low = int(position)
    value_low = flat.kthvalue(low + 1).values
    value_high = flat.kthvalue(min(low + 2, flat.numel())).values
    threshold = value_low + (position - low) * (value_high - value_low)
    return flat[flat >= threshold].mean()


def quantile_normalise(maps: torch.Tensor, q_a: torch.Tensor, q_b: torch.Tensor) -> torch.Tensor:
    """The paper's linear map: q_a -> 0 and q_b -> 0.1."""
    return 0.1 * (maps - q_a) / (q_b - q_a)


def map_quantiles(maps: torch.Tensor, max_values: int = 4_000_000) -> tuple[torch.Tensor, torch.Tensor]:
    """The 0.9 and 0.995 quantiles of ``maps`` (an evenly strided subset beyond ``max_values``)."""
    flat = maps.flatten().float()
    if flat.numel() > max_values:
        flat = flat[:: -(-flat.numel() // max_values)]
    q = torch.quantile(flat, torch.tensor([QUANTILE_A, QUANTILE_B]))
    return q[0], q[1]


def colour_jitter(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The paper's autoencoder augmentation: per image one of brightness, contrast or
    saturation, with a factor drawn from [0.8, 1.2] (torch's global generator, seeded by the run)."""
    n = images.shape[0]
    rgb = images * std + mean
    choice = torch.randint(0, 3, (n,))
    factor = (0.8 + 0.4 * torch.rand(n)).view(n, 1, 1, 1).to(images)
    grey = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]).unsqueeze(1)
    brightness = rgb * factor
    contrast = (rgb - grey.mean(dim=(2, 3), keepdim=True)) * factor + grey.mean(dim=(2, 3), keepdim=True)
    saturation = (rgb - grey) * factor + grey
    pick = choice.view(n, 1, 1, 1).to(images.device)
    out = torch.where(pick == 0, brightness, torch.where(pick == 1, contrast, saturation))
    return (out.clamp(0, 1) - mean) / std


class Autoencoder(nn.Module):
    """The paper's autoencoder: six strided convolutions to a 64-d code, eight upsampling steps back.

    The encoder's last kernel covers what is left of the image (8x8 at 256 px), so any size
    from 64 px up has a 1x1 code. The decoder upsamples to the paper's sizes (3, 8, 15, 32,
    63, 127 at 256 px, scaled with the image), then to the PDN's output size.
    """

    def __init__(self, image_size: tuple[int, int], out_channels: int, output_size: tuple[int, int]) -> None:
        super().__init__()
        h, w = image_size
        last = (max(1, -(-h // 32)), max(1, -(-w // 32)))
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, last),
        )  # fmt: skip
        self.sizes = [(max(1, round(h * f / 256)), max(1, round(w * f / 256))) for f in (3, 8, 15, 32, 63, 127)] + [
            output_size
        ]
        self.decoder = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(64, 64, 4, padding=2), nn.ReLU(inplace=True), nn.Dropout(0.2)) for _ in range(6)]
            + [nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True))]
        )
        self.head = nn.Conv2d(64, out_channels, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.encoder(images)
        for size, block in zip(self.sizes, self.decoder, strict=True):
            x = block(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        return self.head(x)


# --------------------------------------------------------------------------------------------


class EfficientAd(AnomalyDetector):
    name = "efficientad"
    Config = EfficientAdConfig

    def __init__(self, config: EfficientAdConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        h, w = cfg.image_size
        if min(h, w) < 64:
            raise ValueError(f"efficientad: image_size must be at least 64 px, got {cfg.image_size}")
        resolved = resolve_resource(
            f"efficientad:pdn_{cfg.model_size}",
            cfg.teacher_weights or None,
            load_path=load_weights_file,
            hint="install adcore-weights-pdn-teachers, or pass --param teacher_weights=FILE (a PDN state dict)",
        )
        state = {k: v.float() for k, v in resolved.value.items()}
        self.teacher_source = resolved.source
        channels = state[max(state, key=lambda k: int(k.split(".")[0]) if k.endswith("weight") else -1)].shape[0]
        self.teacher = pdn(cfg.model_size, channels)
        try:
            self.teacher.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(
                f"efficientad: the teacher ({resolved.source}) is not a PDN-{cfg.model_size}: {error}"
            ) from None
        self.teacher.requires_grad_(False)
        self.channels = channels
        self.student = pdn(cfg.model_size, 2 * channels)
        out = (pdn_output_size(h), pdn_output_size(w))
        self.autoencoder = Autoencoder(cfg.image_size, channels, out)
        for module in (self.teacher, self.student, self.autoencoder):
            module.to(memory_format=torch.channels_last)
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("teacher_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("teacher_std", torch.ones(1, channels, 1, 1))
        for name in ("q_st_a", "q_ae_a"):
            self.register_buffer(name, torch.tensor(0.0))
        for name in ("q_st_b", "q_ae_b"):
            self.register_buffer(name, torch.tensor(0.1))

    # -- phases ---------------------------------------------------------------------------------
    @property
    def training_spec(self) -> TrainingSpec:
        cfg = self.config
        return TrainingSpec(
            [
                Pass("teacher statistics", self._teacher_statistics_batch, self._teacher_statistics_end),
                Stage(
                    "student and autoencoder",
                    self.training_step,
                    self.configure_optimizers,
                    steps=cfg.steps,
                    scheduler_interval="step",
                    auxiliary=("penalty",),
                ),
                Pass("map quantiles", self._quantiles_batch, self._quantiles_end, stream="held_out"),
            ],
            held_out_fraction=cfg.held_out_fraction,
        )

    def fit_begin(self) -> None:
        self._sum = self._sum_sq = None
        self._count = 0
        self._maps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def frozen_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's raw output: frozen, so computed once per training image during a fit."""
        self.teacher.eval()
        with torch.no_grad():
            return [self.teacher(images.contiguous(memory_format=torch.channels_last))]

    def _teacher_statistics_batch(self, batch: Batch) -> None:
        features = self.training_features(batch)[0].double()
        s, s2 = features.sum(dim=(0, 2, 3)), features.square().sum(dim=(0, 2, 3))
        self._sum = s if self._sum is None else self._sum + s
        self._sum_sq = s2 if self._sum_sq is None else self._sum_sq + s2
        self._count += features.shape[0] * features.shape[2] * features.shape[3]

    def _teacher_statistics_end(self) -> None:
        if not self._count:
            raise ValueError("efficientad: no training images were seen")
        mean = self._sum / self._count
        var = (self._sum_sq / self._count - mean.square()).clamp_min(0) * self._count / max(1, self._count - 1)
        self.teacher_mean = mean.float().view(1, -1, 1, 1)
        self.teacher_std = var.sqrt().float().clamp_min(1e-6).view(1, -1, 1, 1)

    def auxiliary_data(self, stream: str) -> AnomalyDataset | None:
        """The penalty images: the user's folder, else the resource ``images:natural``, else none."""
        try:
            folder = resolve_resource("images:natural", self.config.penalty_images or None).value
        except ResourceNotFoundError:
            if self.config.penalty_images:
                raise
            return None  # the Engine logs once that the stage trains without the penalty
        return AnomalyDataset.from_folder(folder, self.input_spec)

    def configure_optimizers(self, budget: Budget):
        cfg = self.config
        parameters = list(self.student.parameters()) + list(self.autoencoder.parameters())
        optimizer = torch.optim.Adam(parameters, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        decay_at = max(1, int(0.95 * budget.total_steps))
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=decay_at, gamma=0.1)

    def training_step(self, batch: Batch) -> torch.Tensor:
        c, n = self.channels, len(batch)
        self.teacher.eval()
        teacher = self._normalise_teacher(self.training_features(batch)[0])
        augmented = colour_jitter(batch.image, self.image_mean, self.image_std)
        with torch.no_grad():
            teacher_augmented = self._normalise_teacher(self.frozen_features(augmented)[0])
        # One student pass over the image, its augmented copy and the penalty images: the
        # same arithmetic as three passes, in larger (faster) batches.
        penalty = batch.auxiliary.get("penalty") if batch.auxiliary else None
        inputs = [batch.image, augmented] + ([penalty.image] if penalty is not None else [])
        student = self.student(torch.cat(inputs).contiguous(memory_format=torch.channels_last)).float()
        loss = hard_feature_loss((teacher - student[:n, :c]).square(), self.config.hard_feature_quantile)
        if penalty is not None:
            loss = loss + student[2 * n :, :c].square().mean()
        reconstruction = self.autoencoder(augmented.contiguous(memory_format=torch.channels_last)).float()
        loss = loss + (teacher_augmented - reconstruction).square().mean()
        loss = loss + (reconstruction - student[n : 2 * n, c:]).square().mean()
        return loss

    def _quantiles_batch(self, batch: Batch) -> None:
        local, global_ = self.raw_maps(batch.image)
        self._maps.append((local.float(), global_.float()))

    def _quantiles_end(self) -> None:
        local = torch.cat([m[0] for m in self._maps])
        global_ = torch.cat([m[1] for m in self._maps])
        self._maps = []
        q_st_a, q_st_b = map_quantiles(local)
        q_ae_a, q_ae_b = map_quantiles(global_)
        self.q_st_a.fill_(q_st_a), self.q_st_b.fill_(q_st_b)
        self.q_ae_a.fill_(q_ae_a), self.q_ae_b.fill_(q_ae_b)

    # -- inference ------------------------------------------------------------------------------
    def _normalise_teacher(self, features: torch.Tensor) -> torch.Tensor:
        return (features.float() - self.teacher_mean) / self.teacher_std

    def raw_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Local (teacher vs student) and global (autoencoder vs student) maps at the image size."""
        c = self.channels
        x = images.contiguous(memory_format=torch.channels_last)
        teacher = self._normalise_teacher(self.teacher(x))
        student = self.student(x).float()
        reconstruction = self.autoencoder(x).float()
        local = (teacher - student[:, :c]).square().mean(dim=1, keepdim=True)
        global_ = (reconstruction - student[:, c:]).square().mean(dim=1, keepdim=True)
        size = images.shape[-2:]
        return tuple(
            F.interpolate(F.pad(m, (MAP_PADDING,) * 4), size=size, mode="bilinear", align_corners=False)
            for m in (local, global_)
        )

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        local, global_ = self.raw_maps(images)
        anomaly_map = 0.5 * quantile_normalise(local, self.q_st_a, self.q_st_b) + 0.5 * quantile_normalise(
            global_, self.q_ae_a, self.q_ae_b
        )
        return DetectorOutput.from_map(anomaly_map)
