"""U-Flow's a-contrario detection: the number of false alarms (NFA) of each pixel.

Under the null hypothesis ("this image is normal") the trained flow's latents are
independent standard normal variables, so each squared latent is chi-squared with one
degree of freedom and exceeds ``tau = chi2_1.ppf(probability_threshold)`` with probability
``p = 1 - probability_threshold``. For a position of a scale, count the candidate latents
(above ``tau``) in a small window around it, averaged over channels: under the null
hypothesis the count is Binomial(n = window area, p). Its tail probability is how
surprising the observation is; the scales' probabilities multiply, and multiplied by the
number of tests (all positions of all scales) it is the
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
    """log10 P(K > observed count) around each position of one scale: (N, 1, h, w).

    A latent is a candidate when its square exceeds ``tau``; a position's observation is
    the share of its channels that are candidates, and the observed count is the sum of
    those shares over the window, tested against K ~ Binomial(window positions, p).
    Averaging over channels (as the authors' implementation) treats a position's channels
    as one observation: counting them as independent trials assumes more independence
    than a CPU-trained flow delivers, and then every normal image raises alarms (all 20
    normal bottle test images did). Windows are cut at the border rather than padded: a
    repeated latent would be counted twice and raise false alarms along the edges.
    """
    tau = chi2_1_quantile(probability_threshold)
    share = (latent.float().square() > tau).to(torch.float32).mean(dim=1, keepdim=True)
    half = window // 2
    area = window * window
    observed = F.avg_pool2d(share, window, stride=1, padding=half, count_include_pad=True) * area
    inside = F.avg_pool2d(torch.ones_like(share[:1]), window, stride=1, padding=half, count_include_pad=True)
    trials = (inside * area).round().long().expand_as(observed)
    # P(K > x) = P(K >= floor(x) + 1); a full window of candidates is capped at P(K = n),
    # the smallest probability the test can state (it would otherwise be 0 and log -inf).
    at_least = (torch.floor(observed + 1e-4).long() + 1).minimum(trials)
    log_probability = torch.empty(observed.shape, dtype=torch.float32, device=latent.device)
    for n in trials.unique().tolist():  # a handful of distinct window areas (centre, edges, corners)
        where = trials == n
        table = binomial_log10_tail(n, 1.0 - probability_threshold, device=latent.device)
        log_probability[where] = table[at_least[where]].to(torch.float32)
    return log_probability


def log_nfa_map(
    latents: Sequence[torch.Tensor],
    image_size: Sequence[int],
    window_size: int = 7,
    probability_threshold: float = 0.5,
) -> torch.Tensor:
    """-log10 NFA per pixel, (N, 1, H, W): positive where an anomaly is detected.

    ``latents`` are finest first. Each scale's log-probability map is upsampled to the
    image and the scales' log-probabilities are summed (the latents of different scales
    are independent under the model, so the probabilities multiply); the number of tests
    is the number of positions over all scales.
    """
    log_probability = sum(
        F.interpolate(
            scale_log10_probability(z, window_size_at(scale, window_size), probability_threshold),
            size=tuple(image_size),
            mode="bilinear",
            align_corners=False,
        )
        for scale, z in enumerate(latents)
    )
    number_of_tests = sum(z.shape[-2] * z.shape[-1] for z in latents)
    return -(math.log10(number_of_tests) + log_probability)
