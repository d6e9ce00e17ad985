"""Building blocks shared by plugins, one concept per module; the public ones are named here.

``from adcore.components import UpsampleBlurMap, PCA, ...``; names load lazily (the flow
blocks import FrEIA only when used).
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "UpsampleBlurMap": "anomaly_map",
    "ApproximateNearestNeighbors": "approximate_search",
    "gaussian_blur": "blur",
    "KCenterGreedy": "coreset",
    "StreamingCoreset": "coreset",
    "k_center_greedy": "coreset",
    "sharded_k_center_greedy": "coreset",
    "FrozenFeatureCache": "feature_cache",
    "focal_loss": "focal_loss",
    "mlp_subnet": "flow",
    "conv_subnet": "flow",
    "all_in_one_flow": "flow",
    "StableGraphINN": "flow",
    "positional_encoding_2d": "flow",
    "gaussian_log_likelihood": "flow",
    "flow_nll_loss": "flow",
    "log_likelihood_to_anomaly_map": "flow",
    "PositionalGaussian": "gaussian",
    "GaussianMixture": "gmm",
    "GaussianKDE": "kde",
    "kmeans": "clustering",
    "kmeans_plus_plus": "clustering",
    "kmeans_assign": "clustering",
    "MultivariateGaussian": "multivariate_gaussian",
    "squared_distances": "nearest_neighbor",
    "nearest_neighbors": "nearest_neighbor",
    "PCA": "pca",
    "PooledFeatures": "pooling",
    "roi_features": "roi",
    "SparseRandomProjection": "random_projection",
    "johnson_lindenstrauss_min_dim": "random_projection",
    "FeatureStandardizer": "standardize",
    "SyntheticAnomalies": "synthetic_anomaly",
    "perlin_noise": "synthetic_anomaly",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'adcore.components' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"adcore.components.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
