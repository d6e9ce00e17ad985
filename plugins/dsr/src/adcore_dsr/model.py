"""DSR (Zavrtanik, Kristan and Skocaj, ECCV 2022): a dual subspace re-projection network.

DSR makes its training anomalies in a discrete latent space instead of pasting textures
into images, so they look like "near-in-distribution" defects, then learns to find them.

1. Discrete latent model (Sec. 3.1, ``adcore_dsr.latent``). A VQ-VAE with two codebooks
   encodes the image into a fine quantised map (1/4 of the side) and a coarse one (1/8);
   the *general object appearance decoder* reconstructs any natural image from both. It
   is pretrained once on natural images and frozen here: resource ``dsr:vq_latent``
   (plugin ``adcore-weights-dsr-latent``) or ``latent_weights=FILE``.
2. Anomalies in quantised feature space (Sec. 3.2). For a normal image with quantised maps
   Q, a Perlin-noise mask selects positions of the fine map, the coarse map, or both; each
   selected code is replaced by a codebook entry drawn at random among the entries far
   from it (``strength`` sets how far: a fraction of the codebook ranked by distance).
   The anomaly mask in image space is the selected positions' footprint.
3. Dual decoding (Sec. 3.3). The general decoder turns the (anomalous) codes into I_gen,
   an image that keeps the anomaly. Two *subspace restriction modules* (small
   encoder-decoders, one per level) map the anomalous codes back towards the normal
   appearance of this object, their outputs are re-quantised with the frozen codebooks,
   and the *object-specific decoder* turns them into I_spc, the object without anomaly.
4. Anomaly detection module (Sec. 3.4). A U-Net on (I_gen, I_spc) outputs the anomaly
   mask; differences between the two reconstructions are what it learns to read.
5. Training stage "object-specific" (the paper's second stage; the first is the latent
   pretraining): restriction modules, object-specific decoder and anomaly detection module
   together, loss ``L2(restricted, Q) per level + L2(I_spc, I) + focal(mask)``; half of the
   images get no anomaly.
6. Training stage "upsampling" (the paper's third): everything else frozen, the
   *upsampling module* (a small U-Net on the image and the detection module's map) learns
   to turn the blocky map -- trained on masks at feature resolution -- into a sharp one,
   on image-space Perlin anomalies (``adcore.components.SyntheticAnomalies``), focal loss.
7. Inference: the pixel map is the upsampling module's output; the image score is the
   maximum of the anomaly detection module's map after a ``score_filter`` mean filter.

CPU deviation: the object-specific decoder starts from the general decoder's weights (same
architecture) so the short CPU budget is spent adapting it, not learning to decode.
"""

from __future__ import annotations

import copy

import attrs
import torch
import torch.nn.functional as F
from adcore import (
    AnomalyDetector,
    Batch,
    Budget,
    DetectorOutput,
    InputSpec,
    Stage,
    TrainingSpec,
    load_weights_file,
    multiple_of,
    non_negative,
    positive,
    resolve_resource,
    to_float_range,
    to_size,
)
from adcore.components import SyntheticAnomalies, focal_loss
from torch import nn

from adcore_dsr.latent import DiscreteLatentModel, ImageDecoder

RESOURCE = "dsr:vq_latent"


def _strength_range(_instance, attribute, value) -> None:
    low, high = value
    if not 0 < low <= high <= 1:
        raise ValueError(f"{attribute.name} must be a range inside (0, 1], got {value}")


@attrs.define
class DsrConfig:
    #: The paper: 256 px.
    image_size: tuple[int, int] = attrs.field(default=(256, 256), converter=to_size, validator=multiple_of(32))
    #: Epochs of the object-specific stage (the paper: 100 on a GPU). 10 + 2 epochs fit in
    #: 280 s at 256 px on 2 idle cores (README).
    epochs: int = attrs.field(default=10, validator=non_negative)
    #: Epochs of the upsampling stage.
    upsampling_epochs: int = attrs.field(default=2, validator=non_negative)
    #: Adam's learning rate in both stages (the paper: 2e-4 for 100 epochs; the short CPU budget uses more).
    learning_rate: float = attrs.field(default=1e-3, validator=positive)
    #: Base width of the anomaly detection U-Net (the paper: 64). It reads the two decodings at half
    #: resolution (the quantised-space masks are blocks of 4 px, so nothing is lost; 4x cheaper).
    anomaly_width: int = attrs.field(default=16, validator=positive)
    #: Base width of the subspace restriction modules.
    restriction_width: int = attrs.field(default=32, validator=positive)
    #: Base width of the upsampling U-Net.
    upsampling_width: int = attrs.field(default=8, validator=positive)
    #: A latent model file (safetensors or torch state dict); "" uses the resource dsr:vq_latent.
    latent_weights: str = ""
    #: Range of the fraction of the codebook (the most distant entries) a replacement is drawn from.
    strength: tuple[float, float] = attrs.field(default=(0.2, 1.0), converter=to_float_range, validator=_strength_range)
    #: Fraction of training images that get an anomaly (both stages).
    anomaly_probability: float = attrs.field(default=0.5)
    focal_gamma: float = attrs.field(default=2.0, validator=non_negative)
    #: Side of the mean filter applied to the detection map before taking its maximum.
    score_filter: int = attrs.field(default=21, validator=positive)


# -- the modules trained per category ------------------------------------------------------------
def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(*_conv_bn_relu(in_channels, out_channels), *_conv_bn_relu(out_channels, out_channels))


class UNet(nn.Module):
    """A U-Net with ``depth`` max-pools and skip connections, two output channels (normal, anomalous)."""

    def __init__(self, in_channels: int, width: int, depth: int = 4, out_channels: int = 2) -> None:
        super().__init__()
        widths = [width * min(2**i, 8) for i in range(depth + 1)]
        self.encoder = nn.ModuleList()
        previous = in_channels
        for channels in widths:
            self.encoder.append(_double_conv(previous, channels))
            previous = channels
        self.decoder = nn.ModuleList(_double_conv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(width, out_channels, 1)
        if out_channels == 2:
            # Start by calling every pixel normal with probability 0.99 (the focal loss paper's
            # prior): anomalies are rare, and the short budget is not spent unlearning p = 0.5.
            nn.init.zeros_(self.head.weight)
            self.head.bias.data = torch.tensor([0.0, -4.6])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for index, block in enumerate(self.encoder):
            x = block(x if index == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for block in self.decoder:
            skip = skips.pop()
            x = block(
                torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1)
            )
        return self.head(x)


class SubspaceRestriction(nn.Module):
    """Maps (possibly anomalous) quantised features towards the object's normal appearance.

    A small encoder-decoder (one downsampling, a skip connection) whose output is compared
    with the anomaly-free codes (L2) and then re-quantised with the frozen codebook.
    """

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.net = UNet(dim, width, depth=1, out_channels=dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


# -- anomalies in quantised feature space ---------------------------------------------------------------
def replace_codes(
    indices: torch.Tensor,
    mask: torch.Tensor,
    codebook: torch.Tensor,
    strength: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Indices (N, H, W) with every masked position replaced by a distant codebook entry.

    For a code c, the other entries are ranked by their distance to c; the replacement is
    drawn uniformly among the ``strength`` fraction of entries farthest from c (at least the
    farthest one, never c itself). ``mask`` (N, H, W) bool, ``strength`` (N,) in (0, 1].
    """
    codes = codebook.shape[0]
    book = codebook.float()
    distances = torch.cdist(book, book)
    ranked = distances.argsort(dim=1)  # ranked[c, 0] is c itself (or an identical entry)
    out = indices.clone()
    for n in range(indices.shape[0]):
        where = mask[n].nonzero(as_tuple=True)
        if not len(where[0]):
            continue
        count = len(where[0])
        lowest = max(1, min(codes - 1, round((1 - float(strength[n])) * codes)))
        ranks = lowest + (torch.rand(count, generator=generator) * (codes - lowest)).long().clamp_max(
            codes - 1 - lowest
        )
        out[n][where] = ranked[indices[n][where], ranks.to(indices.device)]
    return out


# -- the detector ---------------------------------------------------------------------------------------
class Dsr(AnomalyDetector):
    name = "dsr"
    Config = DsrConfig

    def __init__(self, config: DsrConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        resolved = resolve_resource(
            RESOURCE,
            cfg.latent_weights or None,
            load_path=load_weights_file,
            hint="install adcore-weights-dsr-latent, or pass --param latent_weights=FILE (a DSR latent model state dict)",
        )
        self.latent_source = resolved.source
        try:
            self.latent = DiscreteLatentModel.from_state_dict(resolved.value)
        except (KeyError, RuntimeError) as error:
            raise ValueError(f"dsr: the latent model ({resolved.source}) is not a DSR latent model: {error}") from None
        self.latent.requires_grad_(False).eval()
        dim = self.latent.dim
        self.restrict_fine = SubspaceRestriction(dim, cfg.restriction_width)
        self.restrict_coarse = SubspaceRestriction(dim, cfg.restriction_width)
        self.object_decoder: ImageDecoder = copy.deepcopy(self.latent.general_decoder).requires_grad_(True)
        self.anomaly_module = UNet(6, cfg.anomaly_width, depth=4)
        self.upsampling_module = UNet(4, cfg.upsampling_width, depth=3)
        self.image_anomalies = SyntheticAnomalies(anomaly_probability=cfg.anomaly_probability)
        self._phase = "object-specific"
        #: Codes of the training images by path: the frozen encoder's output never changes.
        self._code_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def input_spec(self) -> InputSpec:
        """Pixels in [0, 1], as the latent model was trained."""
        return InputSpec(self.config.image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    @property
    def training_spec(self) -> TrainingSpec:
        cfg = self.config
        return TrainingSpec(
            [
                Stage("object-specific", self.object_specific_step, self.object_specific_optimizers, epochs=cfg.epochs),
                Stage("upsampling", self.upsampling_step, self.upsampling_optimizers, epochs=cfg.upsampling_epochs),
            ]
        )

    def train(self, mode: bool = True):
        """The latent model is always in eval mode; in the upsampling stage, everything but that module."""
        super().train(mode)
        self.latent.eval()
        if mode and self._phase == "upsampling":
            for module in (self.restrict_fine, self.restrict_coarse, self.object_decoder, self.anomaly_module):
                module.eval()
        return self

    def object_specific_optimizers(self, budget: Budget):
        self._phase = "object-specific"
        self.train(self.training)
        modules = (self.restrict_fine, self.restrict_coarse, self.object_decoder, self.anomaly_module)
        parameters = [p for m in modules for p in m.parameters()]
        optimizer = torch.optim.Adam(parameters, lr=self.config.learning_rate)
        total = max(1, budget.total_steps)
        return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, [max(1, int(0.8 * total))], gamma=0.1)

    def upsampling_optimizers(self, budget: Budget):
        self._phase = "upsampling"
        self.train(self.training)
        return torch.optim.Adam(self.upsampling_module.parameters(), lr=self.config.learning_rate)

    # -- the pieces -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.latent.encode(images)

    def quantised_anomalies(
        self, codes: dict[str, torch.Tensor], image_size: tuple[int, int], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(anomalous fine ids, anomalous coarse ids, image-space mask (N, 1, H, W)).

        A Perlin mask at the fine map's resolution; each anomalous image alters the fine
        level, the coarse level (mask max-pooled to 1/8), or both, chosen at random.
        """
        fine_ids, coarse_ids = codes["fine_ids"], codes["coarse_ids"]
        n = fine_ids.shape[0]
        masks = self.image_anomalies.masks(n, tuple(fine_ids.shape[-2:]), generator)
        chosen = torch.rand(n, generator=generator) < self.config.anomaly_probability
        masks = masks * chosen.view(n, 1, 1, 1).float()
        level = torch.randint(0, 3, (n,), generator=generator)  # 0 fine, 1 coarse, 2 both
        fine_mask = masks * (level != 1).view(n, 1, 1, 1).float()
        coarse_mask = F.max_pool2d(masks, 2) * (level != 0).view(n, 1, 1, 1).float()
        coarse_mask = coarse_mask[..., : coarse_ids.shape[-2], : coarse_ids.shape[-1]]
        low, high = self.config.strength
        strength = low + (high - low) * torch.rand(2, n, generator=generator)
        fine_ids = replace_codes(fine_ids, fine_mask[:, 0] > 0, self.latent.vq_fine.codebook, strength[0], generator)
        coarse_ids = replace_codes(
            coarse_ids, coarse_mask[:, 0] > 0, self.latent.vq_coarse.codebook, strength[1], generator
        )
        image_mask = torch.maximum(
            F.interpolate(fine_mask, size=image_size, mode="nearest"),
            F.interpolate(coarse_mask, size=image_size, mode="nearest"),
        )
        return fine_ids, coarse_ids, image_mask

    def dual_decode(self, fine: torch.Tensor, coarse: torch.Tensor) -> dict[str, torch.Tensor]:
        """I_gen from the codes as they are, I_spc from their restriction to the normal subspace."""
        with torch.no_grad():
            general = self.latent.decode(fine, coarse)
        restricted_fine = self.restrict_fine(fine)
        restricted_coarse = self.restrict_coarse(coarse)
        requantised_fine = self._requantise(restricted_fine, self.latent.vq_fine)
        requantised_coarse = self._requantise(restricted_coarse, self.latent.vq_coarse)
        specific = self.object_decoder(requantised_fine, requantised_coarse) + 0.5
        return {
            "general": general,
            "specific": specific,
            "restricted_fine": restricted_fine,
            "restricted_coarse": restricted_coarse,
        }

    @staticmethod
    def _requantise(features: torch.Tensor, quantiser) -> torch.Tensor:
        """Nearest frozen codebook entries, gradient straight through to the restriction module."""
        quantised = quantiser.lookup(quantiser.nearest(features.detach()))
        return features + (quantised - features).detach()

    def detection_logits(self, general: torch.Tensor, specific: torch.Tensor) -> torch.Tensor:
        """Logits (N, 2, H/2, W/2) of the anomaly detection module on the two decodings at half resolution."""
        return self.anomaly_module(F.avg_pool2d(torch.cat([general, specific], dim=1), 2))

    # -- training -----------------------------------------------------------------------------------
    def cached_codes(self, images: torch.Tensor, paths) -> dict[str, torch.Tensor]:
        """Indices and quantised maps of training images, encoded once per image."""
        keys = [str(p) for p in paths] if paths is not None and len(paths) == len(images) else None
        if keys is None or any(k not in self._code_cache for k in keys):
            codes = self.encode(images)
            if keys is not None:
                for key, fine, coarse in zip(keys, codes["fine_ids"], codes["coarse_ids"]):
                    self._code_cache[key] = (fine.short(), coarse.short())
        fine_ids = torch.stack([self._code_cache[k][0] for k in keys]).long() if keys else codes["fine_ids"]
        coarse_ids = torch.stack([self._code_cache[k][1] for k in keys]).long() if keys else codes["coarse_ids"]
        return {
            "fine_ids": fine_ids.to(images.device),
            "coarse_ids": coarse_ids.to(images.device),
            "fine": self.latent.vq_fine.lookup(fine_ids.to(images.device)),
            "coarse": self.latent.vq_coarse.lookup(coarse_ids.to(images.device)),
        }

    def object_specific_losses(
        self, images: torch.Tensor, generator: torch.Generator, paths=None
    ) -> dict[str, torch.Tensor]:
        codes = self.cached_codes(images, paths)
        fine_ids, coarse_ids, masks = self.quantised_anomalies(codes, tuple(images.shape[-2:]), generator)
        fine = self.latent.vq_fine.lookup(fine_ids)
        coarse = self.latent.vq_coarse.lookup(coarse_ids)
        out = self.dual_decode(fine, coarse)
        restriction = F.mse_loss(out["restricted_fine"], codes["fine"]) + F.mse_loss(
            out["restricted_coarse"], codes["coarse"]
        )
        reconstruction = F.mse_loss(out["specific"], images)
        logits = self.detection_logits(out["general"], out["specific"])
        segmentation = focal_loss(logits, F.max_pool2d(masks, 2), self.config.focal_gamma)
        return {
            "loss": restriction + reconstruction + segmentation,
            "restriction": restriction,
            "reconstruction": reconstruction,
            "focal": segmentation,
        }

    def object_specific_step(self, batch: Batch) -> torch.Tensor:
        return self.object_specific_losses(batch.image, torch.default_generator, batch.path)["loss"]

    def upsampling_step(self, batch: Batch) -> torch.Tensor:
        """Image-space Perlin anomalies; only the upsampling module learns."""
        anomalous, masks = self.image_anomalies(batch.image, torch.default_generator)
        with torch.no_grad():
            coarse_map = self.detection_map(anomalous)
        logits = self.upsampling_module(torch.cat([anomalous, coarse_map], dim=1))
        return focal_loss(logits, masks, self.config.focal_gamma)

    # -- inference -----------------------------------------------------------------------------------
    def detection_map(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W): the anomaly detection module's probability of "anomalous", upsampled."""
        codes = self.encode(images)
        out = self.dual_decode(codes["fine"], codes["coarse"])
        probability = torch.softmax(self.detection_logits(out["general"], out["specific"]).float(), dim=1)[:, 1:]
        return F.interpolate(probability, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        detection = self.detection_map(images)
        refined = torch.softmax(self.upsampling_module(torch.cat([images, detection], dim=1)).float(), dim=1)[:, 1:]
        k = self.config.score_filter
        smoothed = F.avg_pool2d(detection, k, stride=1, padding=k // 2, count_include_pad=False) if k > 1 else detection
        return DetectorOutput(pred_score=smoothed.flatten(1).amax(dim=1), anomaly_map=refined)
