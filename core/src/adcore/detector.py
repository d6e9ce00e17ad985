"""Base class for detectors: the steps the Engine calls, with safe defaults.

A plugin subclasses :class:`AnomalyDetector`, gives it a ``name``, an attrs ``Config``
(its hyperparameters, JSON-serialisable), a ``training_spec`` (its phases, see
:mod:`adcore.training`; the default is one pass of ``fit_batch``) and ``forward``.
Everything the detector learns must live in parameters or buffers so checkpoints
(safetensors) can hold it.

``forward`` does the method's arithmetic only (it is what export traces); the Engine
calls :meth:`AnomalyDetector.predict`, which checks the input and that the detector is
fitted first.
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
from adcore.config import build_config
from adcore.postprocess import PostProcessor
from adcore.protocols import DetectorOutput, InputSpec, LearningType
from adcore.training import Budget, TrainingKind, TrainingSpec


class NotFittedError(RuntimeError):
    """The detector was asked to score before it was fitted or loaded."""


class AnomalyDetector(nn.Module):
    """Common machinery; subclasses supply the method."""

    name: ClassVar[str] = ""
    learning_type: ClassVar[LearningType] = LearningType.ONE_CLASS
    Config: ClassVar[type] = type(None)
    #: The input side lengths the architecture needs to be a multiple of (feature strides,
    #: decoders that halve the image): the default input size keeps the data's aspect ratio
    #: and rounds the long side to it (:mod:`adcore.input_size`).
    size_multiple: ClassVar[int] = 32
    #: True when the architecture only takes square inputs: non-square data is then squashed.
    square_input: ClassVar[bool] = False
    #: True when :meth:`combine_shards` merges what each process's share of a pass accumulated,
    #: so a multi-process fit (:mod:`adcore.distributed`) splits the passes between processes.
    supports_sharded_fit: ClassVar[bool] = False
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
    def from_config_dict(cls, values: dict, strict: bool = True) -> AnomalyDetector:
        """Build from JSON/command-line values; old parameter names are accepted as aliases.

        ``strict=False`` (checkpoints) silently drops parameters that no longer exist.
        """
        config = build_config(cls.Config, values, cls.name, strict)
        try:
            return cls(config)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{cls.name}: {exc}") from None

    def config_dict(self) -> dict:
        return attrs.asdict(self.config, recurse=True)

    @property
    def input_spec(self) -> InputSpec:
        """The config's ``image_size`` and the normalisation of the first pretrained backbone."""
        size = getattr(self.config, "image_size", InputSpec().image_size)
        for module in self.modules():
            mean, std = getattr(module, "mean", None), getattr(module, "std", None)
            if module is not self and isinstance(mean, tuple) and isinstance(std, tuple):
                return InputSpec(size, mean, std)
        return InputSpec(size)

    @property
    def training_spec(self) -> TrainingSpec:
        return TrainingSpec.one_pass(self)

    # -- fitting: hooks around all phases ----------------------------------------------
    def fit_begin(self) -> None:
        """Called once before the first phase (reset accumulators here)."""

    def fit_end(self) -> None:
        """Called once after the last phase: finish what the phases accumulated."""

    def combine_shards(self) -> None:
        """Multi-process fit, after each pass, in every process: merge the shards' accumulations.

        Each process saw a contiguous share of the pass's images, in order. Sum with
        :func:`adcore.distributed.all_sum` or gather rows with
        :func:`adcore.distributed.gather_rows`, so every process holds what one process would
        have accumulated (the pass's end and later stages need it); process 0 alone runs
        :meth:`fit_end`. Only called when ``supports_sharded_fit`` is True.
        """
        raise NotImplementedError(f"{type(self).__name__} sets supports_sharded_fit but does not implement combine_shards")

    # -- the one-pass default (memory bank and density models) --------------------------
    def fit_batch(self, batch: Batch) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement fit_batch")

    # -- the gradient default (TrainingSpec.gradient) -----------------------------------
    def configure_optimizers(self, budget: Budget) -> Any:
        """An optimizer, ``(optimizer, scheduler)`` or :class:`adcore.Optimization` for a Stage."""
        raise NotImplementedError(f"{type(self).__name__} does not implement configure_optimizers")

    def training_step(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement training_step")

    def initial_pass_batch(self, batch: Batch) -> None:
        """``TrainingSpec.gradient(initial_pass=True)``: see one batch before training (no gradients)."""
        raise NotImplementedError(
            f"{type(self).__name__} asks for an initial pass but does not implement initial_pass_batch"
        )

    def initial_pass_end(self) -> None:
        """After the initial pass, before the optimizer is configured: finish statistics."""

    # -- data the phases can ask for ----------------------------------------------------
    def augment(self, batch: Batch) -> Batch:
        """Stages with ``augment=True``: return the batch to train on (new images, labels, masks).

        Random draws come from torch's global generator, which the Engine seeds.
        """
        return batch

    def auxiliary_data(self, stream: str) -> Any:
        """The dataset of an auxiliary stream a Stage names (None: train without it)."""
        raise NotImplementedError(f"{type(self).__name__} names auxiliary stream '{stream}' but provides no data")

    # -- a frozen part's features, computed once per image during a fit -----------------
    def frozen_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The features of the detector's frozen part (pretrained encoder, teacher).

        Models that train on top of a frozen network implement it and read training
        features through :meth:`training_features`, so each image's are computed once per fit.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement frozen_features")

    def training_features(self, batch: Batch) -> list[torch.Tensor]:
        """``frozen_features`` of a training batch, from the per-image cache while the Engine fits.

        An augmented batch (see :meth:`augment`) is never served from the cache: its images
        are not the files the cache keys on.
        """
        if self._frozen_feature_cache is None or batch.augmented:
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

    def predict(self, images: torch.Tensor) -> DetectorOutput:
        """Checks, then ``forward``: what the Engine and applications call."""
        self.check_images(images)
        self.check_fitted()
        return self(images)

    def predict_image(self, image: Any, *, tile: int | None = None, tile_stride: int | None = None) -> Any:
        """Score one in-memory frame or file exactly as ``adcore predict`` scores that image.

        ``image`` is a path, a PIL image, a NumPy array ``(H, W, 3)`` (uint8, or float in 0..1
        or 0..255) or a torch tensor ``(3, H, W)``, RGB; it goes through the dataset's own
        preprocessing (:func:`adcore.frames.to_rgb_image`, :func:`adcore.frames.model_input`).
        ``tile``/``tile_stride`` score it as overlapping tiles (:func:`adcore.tiling.score_image`).
        Returns an :class:`adcore.tiling.ImagePrediction`: raw and normalised score, verdict, and
        the map, mask and regions at the image's own resolution. Runs on the detector's device.
        """
        from adcore.frames import to_rgb_image
        from adcore.image_prediction import image_prediction
        from adcore.tiling import score_image

        self.check_fitted()
        scored = score_image(self, to_rgb_image(image), tile=tile, stride=tile_stride)
        return image_prediction(self, scored)

    @property
    def needs_fit(self) -> bool:
        return self.training_spec.kind != TrainingKind.NONE

    def check_fitted(self) -> None:
        if not bool(self.is_fitted) and self.needs_fit:
            raise NotFittedError(f"detector '{self.name}' is not fitted: run fit or load a checkpoint")

    def check_images(self, images: torch.Tensor) -> None:
        """Clear errors for input the method cannot score (video detectors override it)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        if not torch.isfinite(images).all():
            raise ValueError(f"{self.name}: images contain NaN or infinite values")

    # -- checkpoints ---------------------------------------------------------------------
    def external_modules(self) -> dict[str, str]:
        """Submodules a checkpoint does not copy, by state-dict prefix, with their resource source.

        For large frozen pretrained networks (CLIP): the checkpoint records where they came
        from and loading resolves them again, offline first. Default: none (self-contained).
        """
        return {}

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint stores: everything but the external modules."""
        prefixes = tuple(f"{prefix}." for prefix in self.external_modules())
        return {k: v for k, v in self.state_dict().items() if not (prefixes and k.startswith(prefixes))}

    def load_fitted_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint's tensors, letting buffers take the shapes they had when fitted.

        Buffers such as a memory bank are sized by the data at fit time, so a freshly
        built detector cannot know their shapes; parameters must match exactly.
        """
        own = self.checkpoint_state()
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
