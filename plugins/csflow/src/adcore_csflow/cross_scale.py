"""The cross-scale flow: a FrEIA graph of couplings that see three feature scales at once.

FrEIA has no coupling block over several inputs of different sizes, so this module writes
one (:class:`CrossScaleCoupling`, a FrEIA ``InvertibleModule`` with one input per scale)
and its subnetwork (:class:`CrossConvolutions`), and assembles them with FrEIA's
``GraphINN`` and ``PermuteRandom`` as in the paper (Rudolph et al. 2022, Sec. 3.2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch
import torch.nn.functional as F
from adcore.components import StableGraphINN
from torch import nn

#: The paper's flow works on exactly three scales (s, s/2, s/4).
N_SCALES = 3


def _match(tensor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Resize to the reference's spatial size when odd sizes make the halving inexact."""
    if tensor.shape[-2:] == reference.shape[-2:]:
        return tensor
    return F.interpolate(tensor, size=reference.shape[-2:], mode="bilinear", align_corners=False)


class CrossConvolutions(nn.Module):
    """The coupling subnet: per-scale convolutions that also exchange information between scales.

    Each scale gets conv -> leaky ReLU -> conv; the hidden activations of the neighbouring
    scales join in, the finer one through a strided convolution, the coarser one upsampled
    and convolved. The outputs are multiplied by learned gains initialised to zero, so every
    coupling starts as the identity (the paper's trick for a stable start).
    """

    def __init__(
        self, channels_in: int, channels_out: int, hidden_channels: int, kernel_size: int = 3, leaky_slope: float = 0.1
    ) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.inner = nn.ModuleList(
            nn.Conv2d(channels_in, hidden_channels, kernel_size, padding=padding) for _ in range(N_SCALES)
        )
        self.outer = nn.ModuleList(
            nn.Conv2d(hidden_channels, channels_out, kernel_size, padding=padding) for _ in range(N_SCALES)
        )
        # up[k]: from scale k+1 (coarser) to scale k; down[k]: from scale k (finer) to scale k+1.
        self.up = nn.ModuleList(
            nn.Conv2d(hidden_channels, channels_out, kernel_size, padding=padding) for _ in range(N_SCALES - 1)
        )
        self.down = nn.ModuleList(
            nn.Conv2d(hidden_channels, channels_out, kernel_size, padding=padding, stride=2)
            for _ in range(N_SCALES - 1)
        )
        self.activation = nn.LeakyReLU(leaky_slope)
        self.gamma = nn.Parameter(torch.zeros(N_SCALES))

    def forward(self, scales: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        hidden = [self.activation(conv(x)) for conv, x in zip(self.inner, scales)]
        outputs = [conv(h) for conv, h in zip(self.outer, hidden)]
        for k in range(N_SCALES - 1):
            upsampled = F.interpolate(hidden[k + 1], size=hidden[k].shape[-2:], mode="bilinear", align_corners=False)
            outputs[k] = outputs[k] + self.up[k](upsampled)
            outputs[k + 1] = outputs[k + 1] + _match(self.down[k](hidden[k]), outputs[k + 1])
        return [gain * out for gain, out in zip(self.gamma, outputs)]


class CrossScaleCoupling(Fm.InvertibleModule):
    """Affine coupling over three scales jointly (Glow-style, two halves of the channels).

    Forward: y1 = x1 * exp(s(x2)) + t(x2), then y2 = x2 * exp(s(y1)) + t(y1), where s and
    t come from :class:`CrossConvolutions` over all scales of the conditioning half. The
    log-scale is soft-clamped, ``affine_clamp * 2/pi * atan(s / affine_clamp)``, so it stays in
    (-affine_clamp, affine_clamp) and training cannot blow up.
    """

    def __init__(
        self,
        dims_in,
        dims_c=None,
        hidden_channels: int = 1024,
        kernel_size: int = 3,
        affine_clamp: float = 3.0,
        leaky_slope: float = 0.1,
    ) -> None:
        super().__init__(dims_in, dims_c)
        if len(dims_in) != N_SCALES or len({dims[0] for dims in dims_in}) != 1:
            raise ValueError(f"CrossScaleCoupling needs {N_SCALES} inputs with equal channels, got {dims_in}")
        channels = dims_in[0][0]
        if channels < 2:
            raise ValueError(f"CrossScaleCoupling needs at least 2 channels to split, got {channels}")
        self.split1 = channels // 2
        self.split2 = channels - self.split1
        self.affine_clamp = affine_clamp
        self.subnet1 = CrossConvolutions(self.split1, 2 * self.split2, hidden_channels, kernel_size, leaky_slope)
        self.subnet2 = CrossConvolutions(self.split2, 2 * self.split1, hidden_channels, kernel_size, leaky_slope)

    def output_dims(self, input_dims):
        return input_dims

    def _log_scale(self, raw: torch.Tensor) -> torch.Tensor:
        return self.affine_clamp * (2 / math.pi) * torch.atan(raw / self.affine_clamp)

    def _affine(self, subnet: CrossConvolutions, condition: list[torch.Tensor], target: list[torch.Tensor], rev: bool):
        """Transform ``target`` (one tensor per scale) with scales and shifts computed from ``condition``."""
        outputs, log_jac = [], 0.0
        for params, x in zip(subnet(condition), target):
            channels = x.shape[1]
            log_scale, shift = self._log_scale(params[:, :channels]), params[:, channels:]
            outputs.append((x - shift) * torch.exp(-log_scale) if rev else x * torch.exp(log_scale) + shift)
            log_jac = log_jac + log_scale.flatten(1).sum(dim=1)
        return outputs, log_jac

    def forward(self, x, c=None, rev=False, jac=True):
        first = [t[:, : self.split1] for t in x]
        second = [t[:, self.split1 :] for t in x]
        if not rev:
            first, jac1 = self._affine(self.subnet2, second, first, rev=False)
            second, jac2 = self._affine(self.subnet1, first, second, rev=False)
            log_jac = jac1 + jac2
        else:
            second, jac2 = self._affine(self.subnet1, first, second, rev=True)
            first, jac1 = self._affine(self.subnet2, second, first, rev=True)
            log_jac = -(jac1 + jac2)
        return [torch.cat(pair, dim=1) for pair in zip(first, second)], log_jac


def cross_scale_flow(
    dims: Sequence[Sequence[int]],
    coupling_blocks: int,
    hidden_channels: int,
    affine_clamp: float,
    kernel_sizes: Sequence[int],
) -> StableGraphINN:
    """The paper's flow: ``coupling_blocks`` x (a fixed random channel permutation per scale, one cross-scale coupling).

    ``dims`` are the (C, h, w) of the three scales. The permutations come from NumPy's
    global generator (seeded by adcore) and are stored in the state dict.
    """
    nodes: list[Ff.Node] = [Ff.InputNode(*shape, name=f"scale{k}") for k, shape in enumerate(dims)]
    previous = [node.out0 for node in nodes]
    for block, kernel_size in zip(range(coupling_blocks), kernel_sizes):
        permutes = [Ff.Node(previous[k], Fm.PermuteRandom, {}, name=f"permute{block}_{k}") for k in range(N_SCALES)]
        coupling = Ff.Node(
            [p.out0 for p in permutes],
            CrossScaleCoupling,
            {"hidden_channels": hidden_channels, "kernel_size": kernel_size, "affine_clamp": affine_clamp},
            name=f"coupling{block}",
        )
        nodes += [*permutes, coupling]
        previous = [(coupling, k) for k in range(N_SCALES)]
    nodes += [Ff.OutputNode(previous[k], name=f"z{k}") for k in range(N_SCALES)]
    return StableGraphINN(nodes)
