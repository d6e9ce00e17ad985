"""DSR's discrete latent model: a VQ-VAE with two codebooks (Zavrtanik et al., ECCV 2022, Sec. 3.1).

The image is encoded twice: a fine feature map at 1/4 of the image's side and, from it, a
coarse one at 1/8. Each is replaced by its nearest codebook entries (vector quantisation).
The coarse quantised map is upsampled and joins the fine encoder features before the fine
map is quantised (VQ-VAE-2's hierarchy), so the fine codes describe what the coarse ones
leave out. The *general object appearance decoder* reconstructs the image from both
quantised maps (the coarse one upsampled and concatenated with the fine one).

Every size is read back from a state dict's shapes (:meth:`DiscreteLatentModel.from_state_dict`),
so a user's own file of any width loads without extra settings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantisation with a straight-through gradient.

    ``forward(z)`` (N, D, H, W) returns the quantised map (values of the codebook, gradient
    passed straight through to ``z``), the commitment loss ``||z - sg(q)||^2`` and the
    indices (N, H, W). In training the codebook follows the encoder by exponential moving
    averages (van den Oord et al., 2017, App. A.1), so no codebook loss is needed; entries
    no encoder output chose for a while restart at a random current output.
    """

    def __init__(self, codes: int, dim: int, decay: float = 0.99) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("codebook", torch.randn(codes, dim) * 0.1)
        # EMA statistics: training only, not saved.
        self.register_buffer("ema_count", torch.ones(codes), persistent=False)
        self.register_buffer("ema_sum", self.codebook.clone(), persistent=False)
        self.register_buffer("idle", torch.zeros(codes), persistent=False)
        self.generator: torch.Generator | None = None  # for restarts; the script seeds it

    @torch.no_grad()
    def set_codebook(self, vectors: torch.Tensor) -> None:
        """Replace the codebook (and restart its moving averages from it)."""
        self.codebook.copy_(vectors)
        self.ema_sum.copy_(vectors)
        self.ema_count.fill_(1.0)
        self.idle.zero_()

    @property
    def codes(self) -> int:
        return self.codebook.shape[0]

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Indices (N, H, W) of the nearest codebook entry of every position of z (N, D, H, W)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
        book = self.codebook.float()
        distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)[None]
        return distances.argmin(dim=1).view(z.shape[0], *z.shape[2:])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook vectors (N, D, H, W) for indices (N, H, W)."""
        return self.codebook[indices].permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = z.float()
        indices = self.nearest(z)
        if self.training and torch.is_grad_enabled():
            self._ema_update(z.detach(), indices)
        quantised = self.lookup(indices)
        commitment = F.mse_loss(z, quantised.detach())
        if z.requires_grad:
            quantised = z + (quantised - z).detach()  # straight-through estimator
        return quantised, commitment, indices

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, indices: torch.Tensor) -> None:
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        onehot = F.one_hot(indices.reshape(-1), self.codes).to(flat)
        counts = onehot.sum(0)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (total + self.codes * 1e-5) * total
        self.codebook.copy_(self.ema_sum / smoothed[:, None])
        # Restart entries unused for 50 updates at random encoder outputs of this batch.
        self.idle.add_(1).masked_fill_(counts > 0, 0)
        dead = (self.idle > 50).nonzero().flatten()
        if len(dead):
            pick = torch.randint(0, flat.shape[0], (len(dead),), generator=self.generator)
            self.codebook[dead] = flat[pick]
            self.ema_sum[dead] = flat[pick]
            self.ema_count[dead] = 1.0
            self.idle[dead] = 0


class Residual(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))): VQ-VAE's residual layer."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels // 2, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels // 2, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def residual_stack(channels: int, layers: int = 2) -> nn.Sequential:
    return nn.Sequential(*(Residual(channels) for _ in range(layers)), nn.ReLU())


class ImageDecoder(nn.Module):
    """Both quantised maps to an image: the coarse map upsampled x2, concatenated with the fine
    one, then two x2 transposed convolutions back to the image's side.

    DSR uses this architecture twice: the general object appearance decoder (part of the
    latent model, frozen) and the object-specific decoder (trained per category).
    """

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.upsample_coarse = nn.ConvTranspose2d(dim, dim, 4, stride=2, padding=1)
        self.body = nn.Sequential(
            nn.Conv2d(2 * dim, width, 3, padding=1),
            residual_stack(width),
            nn.ConvTranspose2d(width, width // 2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(width // 2, 3, 4, stride=2, padding=1),
        )

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([fine, self.upsample_coarse(coarse)], dim=1))


class DiscreteLatentModel(nn.Module):
    """Encoders, the two codebooks and the general object appearance decoder.

    ``width``: channels of the encoders and decoder (the paper: 128); ``dim``: codebook
    vector size (the paper: 128); ``fine_codes``/``coarse_codes``: codebook sizes (the paper: 4096).
    """

    def __init__(self, width: int = 64, dim: int = 64, fine_codes: int = 512, coarse_codes: int = 512) -> None:
        super().__init__()
        self.width, self.dim = width, dim
        self.encode_fine = nn.Sequential(  # image -> 1/4
            nn.Conv2d(3, width // 2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width // 2, width, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            residual_stack(width),
        )
        self.encode_coarse = nn.Sequential(  # 1/4 -> 1/8
            nn.Conv2d(width, width, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            residual_stack(width),
        )
        self.pre_coarse = nn.Conv2d(width, dim, 1)
        self.vq_coarse = VectorQuantizer(coarse_codes, dim)
        # The coarse codes' contribution to the fine path (VQ-VAE-2's conditioning).
        self.coarse_to_fine = nn.Sequential(
            nn.Conv2d(dim, width, 3, padding=1), residual_stack(width), nn.ConvTranspose2d(width, dim, 4, 2, 1)
        )
        self.pre_fine = nn.Conv2d(width + dim, dim, 1)
        self.vq_fine = VectorQuantizer(fine_codes, dim)
        self.general_decoder = ImageDecoder(dim, width)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> DiscreteLatentModel:
        """A model with the sizes the state dict's shapes say, loaded strictly (float32)."""
        width = state["encode_fine.2.weight"].shape[0]
        fine_codes, dim = state["vq_fine.codebook"].shape
        coarse_codes = state["vq_coarse.codebook"].shape[0]
        model = cls(width, dim, fine_codes, coarse_codes)
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        return model

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Quantised maps ``fine`` (N, D, H/4, W/4) and ``coarse`` (N, D, H/8, W/8), their
        indices, and the commitment loss. ``images`` in [0, 1], sides multiples of 8."""
        features = self.encode_fine(images - 0.5)
        coarse, commit_coarse, coarse_ids = self.vq_coarse(self.pre_coarse(self.encode_coarse(features)))
        fine_in = self.pre_fine(torch.cat([features, self.coarse_to_fine(coarse)], dim=1))
        fine, commit_fine, fine_ids = self.vq_fine(fine_in)
        return {
            "fine": fine,
            "coarse": coarse,
            "fine_ids": fine_ids,
            "coarse_ids": coarse_ids,
            "commitment": commit_fine + commit_coarse,
        }

    def decode(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """The general object appearance decoder: an image in about [0, 1]."""
        return self.general_decoder(fine, coarse) + 0.5

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        codes = self.encode(images)
        return self.decode(codes["fine"], codes["coarse"]), codes
