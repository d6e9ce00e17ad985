"""AI-VAD's densities: a GMM for velocity, grouped kNN for pose and deep features.

Each feature type gets its own density and its own score scale; to add them up, every
type's score is min-max normalised with statistics of the *training* data, so a region's
combined score is the sum of per-type scores that are about 0..1 on normal data (the paper,
Sec. 3.3; the frame score is the largest region score).

**Grouped kNN** (the reference implementation's ``GroupedKNNEstimator``): the training
features are kept with the video (the *group*) they come from. The score of a feature is
its mean Euclidean distance to its ``k`` nearest training features. The normalisation
statistics are leave-one-video-out: each training video's features are scored against
the bank *without that video*, since consecutive frames of one video are near duplicates
and would make every training distance nearly 0. A video's bank can be compressed to at
most ``max_per_group`` k-means centres (seeded) so the bank stays bounded on long videos;
the reference keeps every feature. With a single training video there is nothing to leave
out; each feature is then scored against the bank without itself (a warning says so).
"""

from __future__ import annotations

import warnings

import torch
from adcore.components import GaussianMixture, kmeans, nearest_neighbors
from torch import nn


class MinMax(nn.Module):
    """Min-max normalisation with statistics of training scores (buffers)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.ones(()))

    def fit(self, scores: torch.Tensor) -> None:
        self.low = scores.min().float()
        self.high = scores.max().float()

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores - self.low) / (self.high - self.low).clamp_min(1e-12)


class GmmDensity(nn.Module):
    """Velocity: negative log-likelihood under a Gaussian mixture, min-max normalised."""

    def __init__(self, n_components: int, seed: int | None) -> None:
        super().__init__()
        self.gmm = GaussianMixture(n_components, covariance="full", seed=seed, regularization=1e-4)
        self.normalize = MinMax()

    def fit(self, features: torch.Tensor) -> None:
        n_components = min(self.gmm.n_components, features.shape[0])
        if n_components < self.gmm.n_components:
            warnings.warn(
                f"ai-vad: {features.shape[0]} training regions; fitting {n_components} GMM components",
                stacklevel=2,
            )
            self.gmm.n_components = n_components
        self.gmm.fit(features)
        self.normalize.fit(self.gmm.score(features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.gmm.score(features))


class GroupedKnn(nn.Module):
    """Pose and deep features: distance to the k nearest training features, leave-one-video-out normalised."""

    def __init__(self, n_neighbors: int, max_per_group: int) -> None:
        super().__init__()
        self.n_neighbors = n_neighbors
        self.max_per_group = max_per_group
        self.register_buffer("bank", torch.zeros(0))
        self.register_buffer("group", torch.zeros(0, dtype=torch.long))
        self.normalize = MinMax()

    def distances(
        self, features: torch.Tensor, bank: torch.Tensor | None = None, skip_self: bool = False
    ) -> torch.Tensor:
        """Mean distance (N,) of each feature to its ``n_neighbors`` nearest in ``bank``."""
        bank = self.bank if bank is None else bank
        k = min(self.n_neighbors + int(skip_self), bank.shape[0])
        found = nearest_neighbors(features.float(), bank.float(), k=k)[0]
        return (found[:, 1:] if skip_self and k > 1 else found).mean(dim=1)

    def fit(self, groups: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> None:
        banks = []
        for name in sorted(groups):
            features = groups[name].float()
            if features.shape[0] > self.max_per_group:
                features = kmeans(features, self.max_per_group, max_iterations=50, generator=generator)
            banks.append(features)
        if sum(b.shape[0] for b in banks) < 2:
            raise ValueError("ai-vad: need at least 2 training regions for a kNN density")
        self.bank = torch.cat(banks)
        self.group = torch.repeat_interleave(torch.tensor([b.shape[0] for b in banks]))
        if len(banks) == 1:
            warnings.warn(
                "ai-vad: one training video: kNN normalisation leaves out each feature itself, not its video "
                "(give several training videos for the paper's leave-one-video-out statistics)",
                stacklevel=2,
            )
            self.normalize.fit(self.distances(self.bank, skip_self=True))
            return
        held_out = [self.distances(bank, self.bank[self.group != index]) for index, bank in enumerate(banks)]
        self.normalize.fit(torch.cat(held_out))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.distances(features))
