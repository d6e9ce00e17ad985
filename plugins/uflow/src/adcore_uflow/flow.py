"""The U-shaped normalizing flow of U-Flow: one flow stage per scale, coarsest first.

Going up the "U", each scale's stage (a stack of Glow-like ``AllInOneBlock`` couplings)
transforms its input; half of its output channels become that scale's latent variables,
the other half are upsampled (invertibly: IRevNet's channel-to-space reshuffle, 4 channels
become a 2x2 block) and concatenated to the next finer scale's features. The finest stage
keeps all its output. Every step is invertible, so the latents of all scales are jointly
standard normal and independent under the model, which is what the a-contrario test needs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import FrEIA.modules as Fm
import torch
from adcore.components import all_in_one_flow, conv_subnet
from torch import nn


def _kept_for_upsampling(channels: int) -> int:
    """Channels sent up to the finer scale: about half, a multiple of 4 (the upsampling needs it)."""
    return channels // 8 * 4


class UShapedFlow(nn.Module):
    """Features at several scales (finest first) -> latents per scale (finest first) and log|det J|."""

    def __init__(
        self,
        channels: Sequence[int],
        sizes: Sequence[tuple[int, int]],
        coupling_blocks: int = 4,
        affine_clamp: float = 2.0,
        affine_subnet_channels_ratio: float = 1.0,
        permute_soft: bool = False,
    ) -> None:
        super().__init__()
        if len(channels) != len(sizes) or not channels:
            raise ValueError(f"need one size per scale, got channels {list(channels)} and sizes {list(sizes)}")
        for (h, w), (h_next, w_next) in itertools.pairwise(sizes):
            if (h, w) != (2 * h_next, 2 * w_next):
                raise ValueError(f"consecutive scales must differ by a factor 2 (stride x2), got sizes {list(sizes)}")

        def subnet(step: int):
            # As the reference implementation: 3x3 convolutions on even steps, 1x1 on odd ones.
            return conv_subnet(kernel_size=3 if step % 2 == 0 else 1, hidden_ratio=affine_subnet_channels_ratio)

        stages, upsamplers, latent_channels = [], [], []
        carried = 0  # channels coming up from the coarser scale
        for scale in reversed(range(len(channels))):
            stage_channels = channels[scale] + carried
            h, w = sizes[scale]
            stages.append(
                all_in_one_flow(
                    (stage_channels, h, w),
                    coupling_blocks,
                    subnet,
                    affine_clamp,
                    permute_soft=permute_soft,
                    per_block=True,
                )
            )
            if scale > 0:
                up = _kept_for_upsampling(stage_channels)
                if up == 0:
                    raise ValueError(f"scale {scale} has {stage_channels} channels; U-Flow needs at least 8 to split")
                upsamplers.append(Fm.IRevNetUpsampling([(up, h, w)]))
                latent_channels.append(stage_channels - up)
                carried = up // 4
            else:
                upsamplers.append(None)
                latent_channels.append(stage_channels)
        # Stored coarsest first (the order they run in).
        self.stages = nn.ModuleList(stages)
        self.upsamplers = nn.ModuleList([u for u in upsamplers if u is not None])
        self.latent_channels = list(reversed(latent_channels))  # finest first
        self.feature_channels = list(channels)  # finest first

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Latents (finest first, each (N, C_l, h_l, w_l)) and the total log|det J| per sample (N,)."""
        latents: list[torch.Tensor] = []
        log_jac_det = torch.zeros(features[0].shape[0], device=features[0].device)
        carried = None
        for index, stage in enumerate(self.stages):
            x = features[len(features) - 1 - index]
            if carried is not None:
                x = torch.cat([x, carried], dim=1)
            z, jac = stage(x)
            log_jac_det = log_jac_det + jac
            if index < len(self.upsamplers):
                up = _kept_for_upsampling(z.shape[1])
                (carried,), _ = self.upsamplers[index]([z[:, :up]])  # a permutation: log|det| = 0
                latents.append(z[:, up:])
            else:
                latents.append(z)
        return latents[::-1], log_jac_det

    def reverse(self, latents: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Features (finest first) from latents (finest first): the exact inverse of ``forward``."""
        features: list[torch.Tensor] = []
        carried_down = None  # the upsampled half of the coarser stage's output, back at its own size
        for index in reversed(range(len(self.stages))):  # finest stage first
            latent = latents[len(self.stages) - 1 - index]
            z = latent if carried_down is None else torch.cat([carried_down, latent], dim=1)
            x, _ = self.stages[index](z, rev=True, jac=False)
            if index > 0:  # this stage's input held what came up from the coarser stage
                own = self.feature_channels[len(self.stages) - 1 - index]
                (carried_down,), _ = self.upsamplers[index - 1]([x[:, own:]], rev=True, jac=False)
                x = x[:, :own]
            features.append(x)
        return features
