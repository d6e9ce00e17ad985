"""A Gaussian mixture model fitted by expectation-maximisation, in torch.

AI-VAD scores velocity features by their likelihood under a GMM of the training
features; any plugin that needs a multi-modal density of low-dimensional features can
use it. Step by step:

1. **Initialisation.** k-means (:func:`adcore.components.kmeans`, k-means++ seeded from
   ``seed``) clusters the points; every point starts fully responsible to its cluster.
2. **M-step.** From responsibilities ``r`` (N, K): mixture weights ``w_k = sum_n r_nk / N``,
   means ``mu_k`` (responsibility-weighted), covariances ``Sigma_k`` (``"full"``: D x D;
   ``"diag"``: variances only) plus ``regularization`` on the diagonal, so a component
   that collapses on a few (or identical) points stays invertible.
3. **E-step.** ``r_nk = w_k N(x_n | mu_k, Sigma_k) / sum_j w_j N(x_n | mu_j, Sigma_j)``,
   in log space (log-sum-exp) so tiny likelihoods do not underflow.
4. Repeat 2-3 until the mean log-likelihood improves by less than ``tolerance`` or
   ``max_iterations`` is reached.

:meth:`GaussianMixture.score_samples` is ``log p(x)``; :meth:`GaussianMixture.score`, the
negative log-likelihood, is the anomaly score (rare = high). Everything fitted lives in
buffers, so checkpoints (safetensors) hold it; arithmetic runs in float64.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from adcore.components.clustering import kmeans, kmeans_assign

COVARIANCE_TYPES = ("full", "diag")


class GaussianMixture(nn.Module):
    """``GaussianMixture(n_components, covariance, max_iterations, tolerance, seed)``; ``fit`` then ``score``."""

    def __init__(
        self,
        n_components: int = 1,
        covariance: str = "full",
        max_iterations: int = 100,
        tolerance: float = 1e-3,
        regularization: float = 1e-6,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        if n_components < 1:
            raise ValueError(f"GaussianMixture: n_components must be >= 1, got {n_components}")
        if covariance not in COVARIANCE_TYPES:
            raise ValueError(f"GaussianMixture: covariance must be one of {COVARIANCE_TYPES}, got {covariance!r}")
        self.n_components = n_components
        self.covariance = covariance
        self.max_iterations = max_iterations
        self.tolerance = tolerance
        self.regularization = regularization
        self.seed = seed
        self.register_buffer("weights", torch.empty(0))
        self.register_buffer("means", torch.empty(0))
        self.register_buffer("covariances", torch.empty(0))
        self.converged = False
        self.n_iterations = 0

    @property
    def is_fitted(self) -> bool:
        return self.weights.numel() > 0

    # -- EM -------------------------------------------------------------------------------------
    def _m_step(self, points: torch.Tensor, log_resp: torch.Tensor) -> None:
        resp = log_resp.exp()
        counts = resp.sum(0) + 10 * torch.finfo(resp.dtype).eps  # (K,)
        means = resp.T @ points / counts[:, None]
        centred = points[None] - means[:, None]  # (K, N, D)
        if self.covariance == "full":
            cov = torch.einsum("kn,kni,knj->kij", resp.T, centred, centred) / counts[:, None, None]
            cov = cov + self.regularization * torch.eye(points.shape[1], dtype=points.dtype, device=points.device)
        else:
            cov = torch.einsum("kn,kni->ki", resp.T, centred.square()) / counts[:, None] + self.regularization
        self.weights, self.means, self.covariances = counts / points.shape[0], means, cov

    def _log_gaussians(self, points: torch.Tensor) -> torch.Tensor:
        """log N(x_n | mu_k, Sigma_k) for every point and component: (N, K)."""
        points = points.to(torch.float64)
        means, cov = self.means.to(torch.float64), self.covariances.to(torch.float64)
        dim = points.shape[1]
        centred = points[None] - means[:, None]  # (K, N, D)
        if self.covariance == "full":
            chol = torch.linalg.cholesky(cov)  # (K, D, D)
            solved = torch.linalg.solve_triangular(chol, centred.transpose(1, 2), upper=False)  # (K, D, N)
            mahalanobis = solved.square().sum(1)  # (K, N)
            log_det = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)  # (K,)
        else:
            mahalanobis = (centred.square() / cov[:, None]).sum(2)
            log_det = torch.log(cov).sum(1)
        return (-0.5 * (dim * math.log(2 * math.pi) + log_det[:, None] + mahalanobis)).T

    def _weighted_log_prob(self, points: torch.Tensor) -> torch.Tensor:
        return self._log_gaussians(points) + torch.log(self.weights.to(torch.float64))[None]

    def fit(self, points: torch.Tensor) -> GaussianMixture:
        """EM on ``points`` (N, D), N >= n_components."""
        if points.ndim != 2 or points.shape[0] < self.n_components:
            raise ValueError(
                f"GaussianMixture: need (N, D) points with N >= n_components={self.n_components}, "
                f"got {tuple(points.shape)}"
            )
        points = points.detach().to(torch.float64)
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=points.device).manual_seed(self.seed)
        centres = kmeans(points, self.n_components, generator=generator).to(torch.float64)
        labels = kmeans_assign(points, centres)
        resp = torch.nn.functional.one_hot(labels, self.n_components).to(torch.float64)
        self._m_step(points, torch.log(resp.clamp_min(1e-300)))
        previous = -math.inf
        self.converged = False
        for iteration in range(1, self.max_iterations + 1):
            weighted = self._weighted_log_prob(points)
            log_norm = torch.logsumexp(weighted, dim=1, keepdim=True)
            self._m_step(points, weighted - log_norm)
            current = float(log_norm.mean())
            self.n_iterations = iteration
            if abs(current - previous) < self.tolerance:
                self.converged = True
                break
            previous = current
        return self

    # -- scoring -------------------------------------------------------------------------------------
    def score_samples(self, points: torch.Tensor) -> torch.Tensor:
        """log p(x) of each row of ``points`` (N, D) under the mixture: (N,), float32."""
        if not self.is_fitted:
            raise RuntimeError("GaussianMixture: call fit first")
        return torch.logsumexp(self._weighted_log_prob(points), dim=1).float()

    def score(self, points: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood (N,): the anomaly score, higher = rarer."""
        return -self.score_samples(points)

    def predict(self, points: torch.Tensor) -> torch.Tensor:
        """The most responsible component of each point (N,)."""
        return self._weighted_log_prob(points).argmax(dim=1)
