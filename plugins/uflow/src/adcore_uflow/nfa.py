"""U-Flow's a-contrario detection: the number of false alarms (NFA) of each pixel.

Under the null hypothesis ("this image is normal") the trained flow's latents are
independent standard normal variables, so each squared latent is chi-squared with one
degree of freedom and exceeds ``tau = chi2_1.ppf(probability_threshold)`` with probability
``p = 1 - probability_threshold``. For a position of a scale, count the latents above
``tau`` over all channels in a small window around it: under the null hypothesis the count
is Binomial(n = channels x window area, p). Its tail probability is how surprising the
observation is; multiplied by the number of tests (all positions of all scales) it is the
NFA, the expected number of such detections in a normal image. ``-log10 NFA > 0`` (fewer
than one false alarm per image is expected) flags a pixel, with no anomalous data and no
hand-tuned threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def chi2_1_quantile(probability: float) -> float:
    """Quantile of the chi-squared distribution with one degree of freedom (a squared normal)."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {probability}")
    return float(torch.special.ndtri(torch.tensor((1.0 + probability) / 2.0, dtype=torch.float64)) ** 2)


def binomial_log10_tail(n: int, p: float, device: torch.device | None = None) -> torch.Tensor:
    """log10 P(K >= k) for K ~ Binomial(n, p) and k = 0..n, shape (n + 1,), in float64."""
    k = torch.arange(n + 1, dtype=torch.float64, device=device)
    log_pmf = (
        math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)
    )
    # Tail sums from the top, in the log domain so tiny tails stay exact.
    log_tail = torch.logcumsumexp(log_pmf.flip(0), dim=0).flip(0)
    return (log_tail / math.log(10)).clamp(max=0.0)


def window_size_at(scale: int, window_size: int) -> int:
    """The window shrinks with the scale's stride (finest scale: ``window_size``), odd, at least 3."""
    half = max(1, int(window_size / 2**scale) // 2)
    return 2 * half + 1


def scale_log10_probability(latent: torch.Tensor, window: int, probability_threshold: float) -> torch.Tensor:
    """log10 of the binomial tail of the candidate count around each position: (N, 1, h, w).

    Windows are cut at the border rather than padded: a padded (repeated) latent would be
    counted twice, the count would no longer be binomial and borders would raise false alarms.
    """
    tau = chi2_1_quantile(probability_threshold)
    candidates = (latent.float().square() > tau).to(torch.float32).sum(dim=1, keepdim=True)
    half = window // 2
    area = window * window
    counts = (F.avg_pool2d(candidates, window, stride=1, padding=half, count_include_pad=True) * area).round().long()
    inside = F.avg_pool2d(torch.ones_like(candidates[:1]), window, stride=1, padding=half, count_include_pad=True)
    trials = ((inside * area).round().long() * latent.shape[1]).expand_as(counts)
    log_probability = torch.empty(counts.shape, dtype=torch.float32, device=latent.device)
    for n in trials.unique().tolist():  # a handful of distinct window areas (centre, edges, corners)
        where = trials == n
        table = binomial_log10_tail(n, 1.0 - probability_threshold, device=latent.device)
        log_probability[where] = table[counts[where]].to(torch.float32)
    return log_probability


def log_nfa_map(
    latents: Sequence[torch.Tensor],
    image_size: Sequence[int],
    window_size: int = 7,
    probability_threshold: float = 0.5,
) -> torch.Tensor:
    """-log10 NFA per pixel, (N, 1, H, W): positive where an anomaly is detected.

    ``latents`` are finest first. Each scale's log-probability map is upsampled to the
    image; a pixel takes its most significant scale, and the number of tests is the
    number of positions over all scales (each scale-position is one test).
    """
    maps = [
        F.interpolate(
            scale_log10_probability(z, window_size_at(scale, window_size), probability_threshold),
            size=tuple(image_size),
            mode="bilinear",
            align_corners=False,
        )
        for scale, z in enumerate(latents)
    ]
    log_probability = torch.stack(maps).amin(dim=0)
    number_of_tests = sum(z.shape[-2] * z.shape[-1] for z in latents)
    return -(math.log10(number_of_tests) + log_probability)
