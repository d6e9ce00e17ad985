"""adcore: a minimal visual anomaly-detection core; models arrive as plugins.

This module is the public API. Plugins import from ``adcore`` and ``adcore.components``
only (a test enforces it); everything else is internal and may change without notice.
Names load lazily, so ``import adcore`` (and ``adcore --version``) does not import torch.

``API_VERSION`` is the plugin API's major version: it changes when a plugin written for
the previous one can break (a hook's meaning, a base-class method a plugin overrides, a
name removed from this module). Version 2 (adcore 0.2) introduced training phases,
``predict``/``forward``, cards and resources; API 1 plugins that register classes and
weight providers still load, but their ``ADCORE_API = ">=1,<2"`` refuses API 2: they
declare ``">=1,<3"`` once checked.
"""

from __future__ import annotations

import importlib
from typing import Any

from adcore.hookspecs import hookimpl

__version__ = "0.2.0"

#: Version of the plugin API. A plugin declares the range it supports with
#: ``ADCORE_API = ">=2,<3"`` style specifiers; incompatible plugins are refused.
API_VERSION = 2

#: public name -> module that defines it
_PUBLIC = {
    # detectors
    "AnomalyDetector": "adcore.detector",
    "NotFittedError": "adcore.detector",
    "DetectorOutput": "adcore.protocols",
    "InputSpec": "adcore.protocols",
    "LearningType": "adcore.protocols",
    "Batch": "adcore.batch",
    "VideoBatch": "adcore.batch",
    "DetectorCard": "adcore.card",
    # training phases
    "TrainingSpec": "adcore.training",
    "TrainingKind": "adcore.training",
    "Pass": "adcore.training",
    "Stage": "adcore.training",
    "Budget": "adcore.training",
    "Optimization": "adcore.training",
    "gather_rows": "adcore.distributed",
    # protocols of the building blocks
    "FeatureExtractor": "adcore.protocols",
    "DensityEstimator": "adcore.protocols",
    "Sampler": "adcore.protocols",
    "AnomalyMapGenerator": "adcore.protocols",
    "Detector": "adcore.protocols",
    # configs
    "to_size": "adcore.config",
    "to_int_tuple": "adcore.config",
    "to_bool": "adcore.config",
    "positive": "adcore.config",
    "non_negative": "adcore.config",
    "at_least": "adcore.config",
    "multiple_of": "adcore.config",
    "to_float_range": "adcore.config",
    "unit_interval": "adcore.config",
    "one_of": "adcore.config",
    "distinct_levels": "adcore.config",
    # backbones and resources
    "create_feature_extractor": "adcore.backbones.feature_extractor",
    "create_torchfx_extractor": "adcore.backbones.torchfx",
    "TorchFXFeatureExtractor": "adcore.backbones.torchfx",
    "graph_node_names": "adcore.backbones.torchfx",
    "ImagePrediction": "adcore.image_prediction",
    "TimmFeatureExtractor": "adcore.backbones.feature_extractor",
    "RANDOM_INIT": "adcore.backbones.weights",
    "WeightsNotFoundError": "adcore.backbones.weights",
    "load_weights_file": "adcore.backbones.weights",
    "PackagedWeights": "adcore.packaged_weights",
    "resolve_weights": "adcore.backbones.weights",
    "resolve_resource": "adcore.resources",
    "ResourceNotFoundError": "adcore.resources",
    "ResourceProvider": "adcore.resources",
    "ResolvedResource": "adcore.resources",
    "LazyProvider": "adcore.plugins",
    "AnomalyDataset": "adcore.data.dataset",
    "ImageRecord": "adcore.data.dataset",
    # running detectors (applications, notebooks)
    "Engine": "adcore.engine",
    "Predictions": "adcore.engine",
    "TrainingDivergedError": "adcore.engine",
    "create_detector": "adcore.plugins",
    "load_data": "adcore.data.sources",
    "default_input_size": "adcore.input_size",
    "save_checkpoint": "adcore.checkpoint",
    "load_checkpoint": "adcore.checkpoint",
    "fit_run": "adcore.run",
    "evaluate_run": "adcore.run",
    "predict_run": "adcore.run",
}

__all__ = ["API_VERSION", "__version__", "hookimpl", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'adcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
