"""What the normalizing-flow detectors (CFlow, FastFlow, CS-Flow, U-Flow) share.

FrEIA supplies the invertible blocks; this module supplies what goes around them:

- subnet constructors (the small networks inside each affine coupling): fully connected
  for flows over feature vectors (CFlow), convolutional for flows over feature maps
  (FastFlow alternates 3x3 and 1x1 kernels, U-Flow and CS-Flow use 3x3);
- :func:`all_in_one_flow`, a stack of FrEIA ``AllInOneBlock`` couplings with clamped
  affine scales (the clamp is what keeps training stable on a CPU in float32);
- :class:`StableGraphINN`, FrEIA's ``GraphINN`` with a reproducible module order, so
  checkpoints of graph-shaped flows (CS-Flow) load into the right modules;
- 2-D sinusoidal positional encodings (CFlow conditions its decoders on them);
- the Gaussian log-likelihood of a flow's output, the training loss derived from it,
  and the conversion of per-position log-likelihoods into an anomaly map.

Conventions: ``z`` is a flow's output with channels in dim 1; log-likelihoods are
*per dimension* (divided by the number of channels) so scales with different channel
counts are comparable and losses do not grow with the feature size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch
import torch.nn.functional as F
from torch import nn

#: FrEIA's subnet constructor: (input channels, output channels) -> module.
SubnetConstructor = Callable[[int, int], nn.Module]

_LOG_2PI = math.log(2 * math.pi)


def _hidden(channels_in: int, hidden_ratio: float) -> int:
    return max(1, round(channels_in * hidden_ratio))


def mlp_subnet(hidden_ratio: float = 2.0) -> SubnetConstructor:
    """Linear-ReLU-Linear, hidden width ``hidden_ratio`` x input (CFlow's decoder subnet)."""

    def construct(channels_in: int, channels_out: int) -> nn.Module:
        hidden = _hidden(channels_in, hidden_ratio)
        return nn.Sequential(nn.Linear(channels_in, hidden), nn.ReLU(), nn.Linear(hidden, channels_out))

    return construct


def conv_subnet(
    kernel_size: int = 3, hidden_ratio: float = 1.0, activation: type[nn.Module] = nn.ReLU
) -> SubnetConstructor:
    """Conv-activation-conv with 'same' padding, hidden width ``hidden_ratio`` x input."""
    if kernel_size % 2 != 1:
        raise ValueError(f"conv_subnet: kernel_size must be odd to keep the feature size, got {kernel_size}")

    def construct(channels_in: int, channels_out: int) -> nn.Module:
        hidden = _hidden(channels_in, hidden_ratio)
        padding = kernel_size // 2
        return nn.Sequential(
            nn.Conv2d(channels_in, hidden, kernel_size, padding=padding),
            activation(),
            nn.Conv2d(hidden, channels_out, kernel_size, padding=padding),
        )

    return construct


def all_in_one_flow(
    dims: Sequence[int],
    n_blocks: int,
    subnet: SubnetConstructor | Callable[[int], SubnetConstructor],
    affine_clamping: float = 2.0,
    condition_dims: Sequence[int] | None = None,
    permute_soft: bool = False,
    per_block: bool = False,
) -> Ff.SequenceINN:
    """``n_blocks`` FrEIA ``AllInOneBlock`` couplings over tensors of shape ``dims``.

    ``per_block=True`` means ``subnet`` is a function of the block index returning a
    constructor (FastFlow alternates kernel sizes this way). ``condition_dims`` makes
    every block conditional on an extra input of that shape (CFlow's positional code).
    The random channel permutations are drawn from NumPy's generator, which
    :func:`adcore.seed.seed_everything` seeds, and are stored in the state dict.
    """
    if n_blocks < 1:
        raise ValueError(f"a flow needs at least one block, got n_blocks={n_blocks}")
    if affine_clamping <= 0:
        raise ValueError(f"affine_clamping must be positive, got {affine_clamping}")
    flow = Ff.SequenceINN(*dims)
    for index in range(n_blocks):
        constructor = subnet(index) if per_block else subnet
        condition = {} if condition_dims is None else {"cond": 0, "cond_shape": tuple(condition_dims)}
        flow.append(
            Fm.AllInOneBlock,
            subnet_constructor=constructor,
            affine_clamping=affine_clamping,
            permute_soft=permute_soft,
            **condition,
        )
    return flow


class StableGraphINN(Ff.GraphINN):
    """A ``GraphINN`` whose modules are registered in the order the nodes were built.

    FrEIA sorts the graph by iterating over sets of nodes, so its ``module_list`` order,
    and with it the state-dict keys, can differ between two builds of the same graph; a
    checkpoint would then load one scale's permutation into another's. Execution still
    follows FrEIA's topological order (it calls ``node.module``, not ``module_list``).
    """

    def __init__(self, nodes: Sequence[Ff.Node]) -> None:
        super().__init__(list(nodes))
        self.module_list = nn.ModuleList(node.module for node in nodes if node.module is not None)


def positional_encoding_2d(channels: int, height: int, width: int) -> torch.Tensor:
    """Sinusoidal encoding of (row, column), shape (channels, height, width).

    Half the channels encode the column, half the row, each as sin/cos pairs at
    geometrically spaced frequencies (Vaswani et al.), as CFlow conditions on.
    """
    if channels % 4 != 0:
        raise ValueError(f"positional_encoding_2d needs channels divisible by 4, got {channels}")
    quarter = channels // 4
    frequencies = torch.exp(torch.arange(quarter, dtype=torch.float32) * -(math.log(10000.0) / quarter))
    columns = torch.arange(width, dtype=torch.float32)[:, None] * frequencies  # (W, C/4)
    rows = torch.arange(height, dtype=torch.float32)[:, None] * frequencies  # (H, C/4)
    encoding = torch.empty(channels, height, width)
    encoding[0 : 2 * quarter : 2] = torch.sin(columns).T[:, None, :].expand(-1, height, -1)
    encoding[1 : 2 * quarter : 2] = torch.cos(columns).T[:, None, :].expand(-1, height, -1)
    encoding[2 * quarter :: 2] = torch.sin(rows).T[:, :, None].expand(-1, -1, width)
    encoding[2 * quarter + 1 :: 2] = torch.cos(rows).T[:, :, None].expand(-1, -1, width)
    return encoding


def gaussian_log_likelihood(z: torch.Tensor, log_jac_det: torch.Tensor | None = None) -> torch.Tensor:
    """Log-likelihood per dimension under a standard normal, reduced over channels (dim 1).

    ``z`` of shape (N, C, ...) gives (N, ...): one value per sample and position. With
    ``log_jac_det`` (broadcastable to the result, e.g. per position for CFlow's
    per-vector flows) it is the change-of-variables log-likelihood of the input.
    """
    channels = z.shape[1]
    log_likelihood = -0.5 * (z.float().square().sum(dim=1) + channels * _LOG_2PI)
    if log_jac_det is not None:
        log_likelihood = log_likelihood + log_jac_det.float()
    return log_likelihood / channels


def flow_nll_loss(outputs: Sequence[torch.Tensor], log_jac_det: torch.Tensor) -> torch.Tensor:
    """The maximum-likelihood loss: mean over samples of -log p(x), per dimension.

    ``outputs`` are the flow's outputs for one sample batch (one tensor, or one per scale
    for multi-scale flows); ``log_jac_det`` (N,) is the total log-determinant per sample.
    The constant log(2*pi) term is left out (it does not change the gradients).
    """
    squared = sum(z.float().square().flatten(1).sum(dim=1) for z in outputs)
    dims = sum(z[0].numel() for z in outputs)
    return ((0.5 * squared - log_jac_det.float()) / dims).mean()


def log_likelihood_to_anomaly_map(
    log_likelihoods: Sequence[torch.Tensor],
    image_size: Sequence[int],
    mode: str = "nll",
    fusion: str = "mean",
) -> torch.Tensor:
    """Per-position log-likelihoods at one or more scales (each (N, h, w)) -> (N, 1, H, W).

    ``mode="nll"``: the anomaly is the negative log-likelihood per dimension.
    ``mode="probability"``: it is minus the likelihood per dimension, exp(log p), in
    [-1, 0]; saturating, so far-off outliers do not dominate the map (FastFlow, CFlow).
    Each scale is upsampled bilinearly to the image; ``fusion`` combines the scales
    ("mean", "sum", or "product" of the per-scale maps).
    """
    if mode not in ("nll", "probability"):
        raise ValueError(f"mode must be 'nll' or 'probability', got {mode!r}")
    if fusion not in ("mean", "sum", "product"):
        raise ValueError(f"fusion must be 'mean', 'sum' or 'product', got {fusion!r}")
    maps = []
    for log_likelihood in log_likelihoods:
        anomaly = -log_likelihood.float() if mode == "nll" else -torch.exp(log_likelihood.float())
        maps.append(F.interpolate(anomaly.unsqueeze(1), size=tuple(image_size), mode="bilinear", align_corners=False))
    stacked = torch.stack(maps)
    if fusion == "product":
        return stacked.prod(dim=0)
    return stacked.sum(dim=0) if fusion == "sum" else stacked.mean(dim=0)
