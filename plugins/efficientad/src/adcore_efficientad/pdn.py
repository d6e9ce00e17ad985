"""The patch description network (PDN) of EfficientAD, Table 6 of the paper, without padding.

Four (S) or six (M) convolutions and two 2x2 average poolings: every output feature
sees a 33x33 patch of the input and nothing else, so a 256x256 image gives 56x56
features (stride 4, first patch centred on pixel 16). Used as the teacher (384
channels), as the student (768) and, with ``pdn_output_size``, to size the autoencoder's
output. Kept free of adcore imports so the teacher-distillation script can use it.
"""

from __future__ import annotations

import torch
from torch import nn

#: side of the square input patch each output feature describes
RECEPTIVE_FIELD = 33
#: distance in input pixels between neighbouring output features
STRIDE = 4


def pdn(size: str, out_channels: int = 384) -> nn.Sequential:
    """PDN-S (``"small"``) or PDN-M (``"medium"``) with ``out_channels`` output channels."""
    if size == "small":
        layers = [
            nn.Conv2d(3, 128, 4), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2),
            nn.Conv2d(128, 256, 4), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2),
            nn.Conv2d(256, 256, 3), nn.ReLU(inplace=True),
            nn.Conv2d(256, out_channels, 4),
        ]  # fmt: skip
    elif size == "medium":
        layers = [
            nn.Conv2d(3, 256, 4), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2),
            nn.Conv2d(256, 512, 4), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2),
            nn.Conv2d(512, 512, 1), nn.ReLU(inplace=True),
            nn.Conv2d(512, 512, 3), nn.ReLU(inplace=True),
            nn.Conv2d(512, out_channels, 4), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 1),
        ]  # fmt: skip
    else:
        raise ValueError(f"PDN size must be 'small' or 'medium', got {size!r}")
    return nn.Sequential(*layers)


def pdn_output_size(size: int) -> int:
    """Side of the PDN's output for an input side ``size`` (both PDNs: 256 -> 56)."""
    out = ((size - 3) // 2 - 3) // 2 - 2 - 3
    return out


def patch_centres(n_out: int) -> torch.Tensor:
    """Input-pixel coordinates (pixel k's centre is k) of the centres of ``n_out`` output features."""
    return (RECEPTIVE_FIELD - 1) / 2 + STRIDE * torch.arange(n_out, dtype=torch.float32)
