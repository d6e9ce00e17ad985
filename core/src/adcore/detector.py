"""Base class for detectors: the steps the loop calls, with safe defaults.

A plugin subclasses :class:`AnomalyDetector`, gives it a ``name``, an attrs ``Config``
(its hyperparameters, JSON-serialisable), and implements either the one-pass path
(``fit_batch``/``fit_end``) or the gradient path (``configure_optimizer``/``training_step``),
plus ``forward``. Everything the detector learns must live in parameters or buffers so
checkpoints (safetensors) can hold it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from adcore.batch import Batch
from adcore.components.feature_cache import FrozenFeatureCache
from adcore.postprocess import PostProcessor
from adcore.protocols import DetectorOutput, InputSpec, LearningType, TrainingKind, TrainingSpec


class NotFittedError(RuntimeError):
    """The detector was asked to score before it was fitted or loaded."""


class AnomalyDetector(nn.Module):
    """Common machinery; subclasses supply the method."""

    name: ClassVar[str] = ""
    learning_type: ClassVar[LearningType] = LearningType.ONE_CLASS
    Config: ClassVar[type] = type(None)
    #: Open only while the Engine fits with gradients (see :meth:`caching_frozen_features`).
    _frozen_feature_cache: FrozenFeatureCache | None = None

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        super().__init__()
        config = self.Config() if config is None else config
        self.config = attrs.evolve(config, **overrides) if overrides else config
        self.post_processor = PostProcessor()
        self.register_buffer("is_fitted", torch.tensor(False))

    # -- description -------------------------------------------------------------------
    @classmethod
    def from_config_dict(cls, values: dict) -> AnomalyDetector:
        known = {f.name for f in attrs.fields(cls.Config)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{cls.name}: unknown parameter(s) {unknown}; known: {sorted(known)}")
        return cls(cls.Config(**values))

    def config_dict(self) -> dict:
        return attrs.asdict(self.config, recurse=True)

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec()

    @property
    def training_spec(self) -> TrainingSpec:
        return TrainingSpec(kind=TrainingKind.FIT_ONCE)

    # -- fitting, one pass (memory bank and density models) ----------------------------
    def fit_begin(self) -> None:
        """Called once before the first batch of a fit (reset accumulators here)."""

    def fit_batch(self, batch: Batch) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement fit_batch")

    def fit_end(self) -> None:
        """Called once after the last batch (or the last epoch): finish statistics."""

    # -- fitting with gradients (teacher-student, flows, reconstruction) ---------------
    def configure_optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError(f"{type(self).__name__} does not implement configure_optimizer")

    def training_step(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement training_step")

    def initial_pass_batch(self, batch: Batch) -> None:
        """With ``TrainingSpec(initial_pass=True)``: see one batch before training (no gradients)."""
        raise NotImplementedError(
            f"{type(self).__name__} asks for an initial pass but does not implement initial_pass_batch"
        )

    def initial_pass_end(self) -> None:
        """After the initial pass, before the optimizer is configured: finish statistics."""

    # -- a frozen part's features, computed once per image during a fit -----------------
    def frozen_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The features of the detector's frozen part (pretrained encoder, teacher).

        Models that train on top of a frozen network implement it and read training
        features through :meth:`training_features`, so each image's are computed once per fit.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement frozen_features")

    def training_features(self, batch: Batch) -> list[torch.Tensor]:
        """``frozen_features`` of a training batch, from the per-image cache while the Engine fits.

        Training images are not augmented by the loop, so a frozen network's features are
        the same every epoch; outside a fit (or with the cache closed) they are computed.
        A detector that augments its training images must call ``frozen_features`` instead.
        """
        if self._frozen_feature_cache is None:
            return self.frozen_features(batch.image)
        return self._frozen_feature_cache(batch.image, batch.path)

    @contextlib.contextmanager
    def caching_frozen_features(self) -> Iterator[None]:
        """While open, :meth:`training_features` computes each image's frozen features once."""
        self._frozen_feature_cache = FrozenFeatureCache(self.frozen_features)
        try:
            yield
        finally:
            self._frozen_feature_cache = None  # the cache can hold gigabytes: free it even on errors

    # -- inference ----------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> DetectorOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_fitted(self) -> None:
        if not bool(self.is_fitted):
            raise NotFittedError(f"detector '{self.name}' is not fitted: run fit or load a checkpoint")

    def check_images(self, images: torch.Tensor) -> None:
        """Clear errors for input the method cannot score."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        if not torch.isfinite(images).all():
            raise ValueError(f"{self.name}: images contain NaN or infinite values")

    # -- checkpoints ---------------------------------------------------------------------
    def load_fitted_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint's tensors, letting buffers take the shapes they had when fitted.

        Buffers such as a memory bank are sized by the data at fit time, so a freshly
        built detector cannot know their shapes; parameters must match exactly.
        """
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(
                f"{self.name}: checkpoint does not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        for key, value in state.items():
            module_path, _, leaf = key.rpartition(".")
            module = self.get_submodule(module_path) if module_path else self
            if leaf in module._buffers:
                module._buffers[leaf] = value.to(own[key].device)
            elif own[key].shape != value.shape:
                raise ValueError(
                    f"{self.name}: parameter {key} has shape {tuple(value.shape)} in the checkpoint, {tuple(own[key].shape)} in the model"
                )
            else:
                with torch.no_grad():
                    getattr(module, leaf).copy_(value)
