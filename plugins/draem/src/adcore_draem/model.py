"""DRAEM (Zavrtanik, Kristan and Skocaj, ICCV 2021), step by step as in the paper.

DRAEM learns what an anomaly looks like from anomalies it makes itself, then finds real ones.

1. Synthetic anomalies (Sec. 3.3). Every training image gets, with probability 1/2, a
   Perlin-noise mask M, and inside it a texture A (an image of the Describable Textures
   set, itself randomly altered) blended with the image at a random opacity:
   ``I_a = (1 - M) * I + M * ((1 - b) * A + b * I)``. ``adcore.components.SyntheticAnomalies``
   does this (``b`` is its ``beta``, the image's weight inside the mask); without texture
   images the source is the image's own flipped copy or smooth colour noise, altered the same way.
2. Reconstructive sub-network (Sec. 3.1): an encoder-decoder without skip connections,
   width ``base_width``, trained to give back the ORIGINAL image I from I_a, with
   ``L_rec = ||I - I_r||^2 + lambda * (1 - SSIM(I, I_r))`` (11x11 windows). It learns to
   remove what does not look normal, so anomalies become differences between I_a and I_r.
3. Discriminative sub-network (Sec. 3.2): a U-Net of width ``disc_base_width`` on the
   concatenation of I_a and I_r, two output channels (normal, anomalous), trained with the
   focal loss (gamma 2) against the exact synthetic mask M. It learns the distance
   function between an image and its reconstruction, rather than using a fixed one.
4. Both are trained jointly, ``L = L_rec + L_seg``, with Adam (lr 1e-4) and the learning
   rate multiplied by 0.2 after 80 % and 90 % of the steps.
5. Inference (Sec. 3.4): the anomaly map is the softmax "anomalous" channel of the
   discriminative output on (I, I_r); the image score is the maximum of that map after a
   21x21 mean filter, so a single hot pixel does not decide the score.

Option (Ristea et al., CVPR 2022): ``sspcab=True`` puts a self-supervised predictive
convolutional attentive block at the end of the reconstructive encoder. It predicts each
position from four corners of a window around it (the centre is masked), re-weights the
channels (squeeze and excitation), and adds ``sspcab_lambda * ||SSPCAB(x) - x||^2`` to the loss.

The CPU cost is the method's weak point: at the paper's widths (128 and 64) one 256 px image
costs about 200 GMAC forward. ``base_width``/``disc_base_width`` scale the cost
quadratically, ``image_size`` with its square, and ``train_crop`` trains on random crops (the
networks are fully convolutional, so they still score whole images); the README says what
each costs in AUROC. The defaults (widths 8, 128 px) cost about 140x less than the paper's.
"""

from __future__ import annotations

import warnings

import attrs
import torch
import torch.nn.functional as F
from adcore import (
    AnomalyDataset,
    AnomalyDetector,
    Batch,
    Budget,
    DetectorOutput,
    InputSpec,
    ResourceNotFoundError,
    Stage,
    TrainingSpec,
    multiple_of,
    non_negative,
    positive,
    resolve_resource,
    to_bool,
    to_float_range,
    to_size,
)
from adcore.components import SyntheticAnomalies, focal_loss
from torch import nn

TEXTURES = "textures"


@attrs.define
class DraemConfig:
    #: 128 px whole images beat 256 px with 128 px crops at the same CPU cost (README); the paper: 256.
    #: The discriminative U-Net halves the resolution five times: sizes are multiples of 32.
    image_size: tuple[int, int] = attrs.field(default=(128, 128), converter=to_size, validator=multiple_of(32))
    #: Width of the reconstructive sub-network (the paper: 128). Cost grows with its square.
    base_width: int = attrs.field(default=8, validator=positive)
    #: Width of the discriminative sub-network (the paper: 64).
    disc_base_width: int = attrs.field(default=8, validator=positive)
    #: About 30 minutes on 2 idle CPU cores at the defaults (the paper: 700 epochs on a GPU).
    epochs: int = attrs.field(default=120, validator=positive)
    #: The paper: 1e-4 for 700 epochs; the short CPU budget uses 1e-3.
    learning_rate: float = attrs.field(default=1e-3, validator=positive)
    #: Train on random square crops of this side (0: whole images). Scoring always sees whole images.
    train_crop: int = attrs.field(default=0, validator=[non_negative, multiple_of(32)])
    #: Folder of texture images for the anomalies ("" : a resource provider's images:textures, else none).
    textures: str = ""
    #: Range of the image's weight inside the mask (official code: the texture's weight is 0.2..1).
    beta: tuple[float, float] = attrs.field(default=(0.0, 0.8), converter=to_float_range)
    anomaly_probability: float = attrs.field(default=0.5)
    ssim_weight: float = attrs.field(default=1.0, validator=non_negative)
    focal_gamma: float = attrs.field(default=2.0, validator=non_negative)
    #: Side of the mean filter applied to the map before taking its maximum as the image score.
    score_filter: int = attrs.field(default=21, validator=positive)
    sspcab: bool = attrs.field(default=False, converter=to_bool)
    sspcab_lambda: float = attrs.field(default=0.1, validator=non_negative)


# -- the two sub-networks -------------------------------------------------------------------
def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def _double_conv(in_channels: int, out_channels: int, middle: int | None = None) -> nn.Sequential:
    middle = out_channels if middle is None else middle
    return nn.Sequential(*_conv_bn_relu(in_channels, middle), *_conv_bn_relu(middle, out_channels))


def _up(in_channels: int, out_channels: int) -> nn.Sequential:
    """Bilinear x2 upsampling, then a convolution (no transposed convolutions, as the paper)."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), *_conv_bn_relu(in_channels, out_channels)
    )


class Sspcab(nn.Module):
    """Self-supervised predictive convolutional attentive block (Ristea et al., 2022).

    Four 1x1 convolutions read the corners of a (2 * offset + 1)-wide window; the centre is
    never seen, so the block must predict it from context. Squeeze-and-excitation re-weights
    the channels. Its loss, ``||SSPCAB(x) - x||^2``, asks the prediction to reproduce x.
    """

    def __init__(self, channels: int, offset: int = 2, reduction: int = 8) -> None:
        super().__init__()
        self.offset = offset
        self.corners = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(4))
        hidden = max(1, channels // reduction)
        self.squeeze = nn.Linear(channels, hidden)
        self.excite = nn.Linear(hidden, channels)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The masked convolution: each position from the four corners at (+-offset, +-offset)."""
        d, (h, w) = self.offset, x.shape[-2:]
        padded = F.pad(x, (d, d, d, d))
        windows = [padded[..., dy : dy + h, dx : dx + w] for dy in (0, 2 * d) for dx in (0, 2 * d)]
        return F.relu(sum(conv(window) for conv, window in zip(self.corners, windows)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        predicted = self.predict(x)
        weights = torch.sigmoid(self.excite(F.relu(self.squeeze(predicted.mean(dim=(2, 3))))))
        return predicted * weights[:, :, None, None]


class ReconstructiveNetwork(nn.Module):
    """Encoder (5 double convolutions, 4 max-pools) and decoder (4 upsamplings), no skips."""

    def __init__(self, width: int, sspcab: bool = False) -> None:
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            _double_conv(3, w), nn.MaxPool2d(2),
            _double_conv(w, 2 * w), nn.MaxPool2d(2),
            _double_conv(2 * w, 4 * w), nn.MaxPool2d(2),
            _double_conv(4 * w, 8 * w), nn.MaxPool2d(2),
            _double_conv(8 * w, 8 * w),
        )  # fmt: skip
        self.sspcab = Sspcab(8 * w) if sspcab else None
        self.decoder = nn.Sequential(
            _up(8 * w, 8 * w), _double_conv(8 * w, 4 * w, middle=8 * w),
            _up(4 * w, 4 * w), _double_conv(4 * w, 2 * w, middle=4 * w),
            _up(2 * w, 2 * w), _double_conv(2 * w, w, middle=2 * w),
            _up(w, w), _double_conv(w, w),
            nn.Conv2d(w, 3, 3, padding=1),
        )  # fmt: skip

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, SSPCAB loss: 0 without the block)."""
        code = self.encoder(images)
        sspcab_loss = code.new_zeros(())
        if self.sspcab is not None:
            predicted = self.sspcab(code)
            sspcab_loss = F.mse_loss(predicted, code)
            code = predicted
        return self.decoder(code), sspcab_loss


class DiscriminativeNetwork(nn.Module):
    """A U-Net: 6 encoder blocks (5 max-pools), 5 decoder blocks with skip connections."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        w = width
        widths = [w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w]
        self.encoder = nn.ModuleList()
        previous = in_channels
        for channels in widths:
            self.encoder.append(_double_conv(previous, channels))
            previous = channels
        # Decoder, deepest first: upsample to the skip's width, concatenate, double conv.
        self.ups = nn.ModuleList([_up(8 * w, 8 * w), _up(8 * w, 4 * w), _up(4 * w, 2 * w), _up(2 * w, w), _up(w, w)])
        self.decoder = nn.ModuleList(
            [
                _double_conv(16 * w, 8 * w),
                _double_conv(12 * w, 4 * w),
                _double_conv(6 * w, 2 * w),
                _double_conv(3 * w, w),
                _double_conv(2 * w, w),
            ]
        )
        self.head = nn.Conv2d(w, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for index, block in enumerate(self.encoder):
            x = block(x if index == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.ups, self.decoder):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def _init_weights(module: nn.Module) -> None:
    """The official implementation's start: N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# -- losses ------------------------------------------------------------------------------------
def ssim_loss(first: torch.Tensor, second: torch.Tensor, window_size: int = 11) -> torch.Tensor:
    """``1 - mean SSIM`` over 11x11 Gaussian windows (kornia's SSIM, values in [0, 1])."""
    from kornia.metrics import ssim

    return 1 - ssim(first.float(), second.float(), window_size, max_val=1.0).mean()


# -- texture alterations -------------------------------------------------------------------------
def alter_textures(textures: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random alterations of texture images in [0, 1], so a finite texture set pastes more variety.

    The official code applies three of nine imgaug operations; these are tensor versions of
    some of them, each with probability 1/2: gamma contrast, brightness, solarise, invert,
    posterise, and a rotation by a multiple of 90 degrees.
    """
    n = textures.shape[0]

    def coin() -> torch.Tensor:
        return (torch.rand(n, generator=generator) < 0.5).view(n, 1, 1, 1).to(textures.device)

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(n, generator=generator)).view(n, 1, 1, 1).to(textures)

    x = textures.clamp(0, 1)
    x = torch.where(coin(), x.clamp_min(1e-6) ** uniform(0.5, 2.0), x)  # gamma contrast
    x = torch.where(coin(), (x * uniform(0.8, 1.2) + uniform(-0.12, 0.12)).clamp(0, 1), x)  # brightness
    x = torch.where(coin(), torch.where(x > 0.5, 1 - x, x), x)  # solarise
    x = torch.where(coin(), 1 - x, x)  # invert
    levels = 2 ** torch.randint(2, 5, (n,), generator=generator).view(n, 1, 1, 1).to(textures)
    x = torch.where(coin(), torch.floor(x * levels) / levels, x)  # posterise (4..16 levels)
    if x.shape[-1] == x.shape[-2]:
        turns = torch.randint(0, 4, (n,), generator=generator).tolist()
        x = torch.stack([torch.rot90(t, k, dims=(-2, -1)) for t, k in zip(x, turns)])
    return x


def random_crop(images: torch.Tensor, size: int, generator: torch.Generator, others: tuple = ()) -> list:
    """One random ``size`` x ``size`` crop per image, the same window for the tensors in ``others``."""
    height, width = images.shape[-2:]
    if size <= 0 or (size >= height and size >= width):
        return [images, *others]
    size_y, size_x = min(size, height), min(size, width)
    crops: list[list[torch.Tensor]] = [[] for _ in range(1 + len(others))]
    for index in range(images.shape[0]):
        top = int(torch.randint(0, height - size_y + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - size_x + 1, (1,), generator=generator))
        for slot, tensor in enumerate((images, *others)):
            crops[slot].append(tensor[index, :, top : top + size_y, left : left + size_x])
    return [torch.stack(c) for c in crops]


# -- the detector ---------------------------------------------------------------------------------
class Draem(AnomalyDetector):
    name = "draem"
    Config = DraemConfig

    def __init__(self, config: DraemConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        low, high = cfg.beta
        self.anomalies = SyntheticAnomalies(beta=(low, high), anomaly_probability=cfg.anomaly_probability)
        self.reconstructive = ReconstructiveNetwork(cfg.base_width, sspcab=cfg.sspcab)
        self.discriminative = DiscriminativeNetwork(6, cfg.disc_base_width)
        self.reconstructive.apply(_init_weights)
        self.discriminative.apply(_init_weights)
        self._texture_source = "none"

    @property
    def input_spec(self) -> InputSpec:
        """Pixels in [0, 1], as the paper: no pretrained backbone, so no ImageNet statistics."""
        return InputSpec(self.config.image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    @property
    def training_spec(self) -> TrainingSpec:
        stage = Stage(
            "train",
            self.training_step,
            self.configure_optimizers,
            epochs=self.config.epochs,
            scheduler_interval="step",
            auxiliary=(TEXTURES,),
            augment=True,
        )
        return TrainingSpec([stage])

    def configure_optimizers(self, budget: Budget):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.config.learning_rate)
        total = budget.total_steps
        milestones = sorted({max(1, int(0.8 * total)), max(1, int(0.9 * total))})
        return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.2)

    # -- the anomaly source ---------------------------------------------------------------------
    def auxiliary_data(self, stream: str):
        """Texture images: ``textures=DIR``, else a provider of ``images:textures``, else none (said once)."""
        if stream != TEXTURES:
            return None
        try:
            resolved = resolve_resource(
                "images:textures", self.config.textures or None, hint="pass --param textures=DIR (e.g. dtd_subset)"
            )
        except ResourceNotFoundError:
            if self.config.textures:  # a folder the user named must exist: no silent fallback
                raise
            warnings.warn(
                "draem: no texture images (pass --param textures=DIR, e.g. Describable Textures); the synthetic "
                "anomalies paste flipped copies of the images and smooth colour noise instead",
                stacklevel=2,
            )
            self._texture_source = "none"
            return None
        self._texture_source = resolved.source
        return AnomalyDataset.from_folder(resolved.value, self.input_spec, cache=True)

    def augment(self, batch: Batch) -> Batch:
        """Crop (optional), then paste Perlin-shaped anomalies; the exact masks become the target."""
        generator = torch.default_generator  # seeded by the Engine at the start of the fit
        textures = batch.auxiliary.get(TEXTURES)
        images = batch.image
        if self.config.train_crop:
            images = random_crop(images, self.config.train_crop, generator)[0]
        n, size = images.shape[0], images.shape[-2:]
        if textures is not None:
            pick = torch.arange(n) % textures.image.shape[0]  # the texture batch may be shorter
            sources = textures.image[pick.to(textures.image.device)]
            if self.config.train_crop:
                sources = random_crop(sources, self.config.train_crop, generator)[0]
            if sources.shape[-2:] != size:
                sources = F.interpolate(sources, size=size, mode="bilinear", align_corners=False)
        else:
            # The core generator's fallback (the image flipped, or smooth colour noise), made
            # here so that it is altered like a texture: flat, saturated, inverted patches too.
            flipped = torch.flip(images, dims=(-1, -2))
            noise = self.anomalies.noise_sources(n, tuple(size), generator, 0.0, 1.0).to(images)
            use_self = (torch.rand(n, generator=generator) < 0.5).view(n, 1, 1, 1).to(images.device)
            sources = torch.where(use_self, flipped, noise)
        sources = alter_textures(sources, generator)
        anomalous, masks = self.anomalies(images, generator, sources)
        labels = (masks.flatten(1).amax(dim=1) > 0).long()
        # `auxiliary` keeps the original (possibly cropped) images: the reconstruction target.
        return attrs.evolve(
            batch, image=anomalous, mask=masks, label=labels, auxiliary={"original": Batch(images, batch.path)}
        )

    # -- training ----------------------------------------------------------------------------------
    def losses(self, anomalous: torch.Tensor, original: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """The paper's L_rec (L2 + SSIM), L_seg (focal) and, with the option, SSPCAB's loss."""
        reconstruction, sspcab_loss = self.reconstructive(anomalous)
        l2 = F.mse_loss(reconstruction.float(), original.float())
        structural = ssim_loss(reconstruction, original)
        logits = self.discriminative(torch.cat([anomalous, reconstruction], dim=1))
        segmentation = focal_loss(logits, masks, self.config.focal_gamma)
        total = l2 + self.config.ssim_weight * structural + segmentation + self.config.sspcab_lambda * sspcab_loss
        return {"loss": total, "l2": l2, "ssim": structural, "focal": segmentation, "sspcab": sspcab_loss}

    def training_step(self, batch: Batch) -> torch.Tensor:
        original = batch.auxiliary["original"].image if "original" in batch.auxiliary else batch.image
        return self.losses(batch.image, original, batch.mask)["loss"]

    # -- inference ---------------------------------------------------------------------------------
    def anomaly_probability_map(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W): the softmax probability of "anomalous" on (image, its reconstruction)."""
        reconstruction, _ = self.reconstructive(images)
        logits = self.discriminative(torch.cat([images, reconstruction], dim=1))
        return torch.softmax(logits.float(), dim=1)[:, 1:]

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        anomaly_map = self.anomaly_probability_map(images)
        k = self.config.score_filter
        smoothed = F.avg_pool2d(anomaly_map, k, stride=1, padding=k // 2) if k > 1 else anomaly_map
        return DetectorOutput(pred_score=smoothed.flatten(1).amax(dim=1), anomaly_map=anomaly_map)
