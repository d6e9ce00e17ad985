"""The five contracts every model is assembled from.

They are structural (``typing.Protocol``): a plugin's class satisfies one by having the
methods, without inheriting anything. The core's building blocks implement them, and
:class:`adcore.detector.AnomalyDetector` is a convenient base for ``Detector``.
"""

from __future__ import annotations

import enum
from typing import Protocol, runtime_checkable

import attrs
import torch

from adcore.training import TrainingKind, TrainingSpec  # noqa: F401 - re-exported for API 1 imports


class LearningType(str, enum.Enum):
    """What a detector needs to see before it can score."""

    ONE_CLASS = "one_class"  # many normal images (PaDiM, PatchCore, STFPM, ...)
    FEW_SHOT = "few_shot"  # a handful of normal images (WinCLIP few-shot)
    ZERO_SHOT = "zero_shot"  # nothing at all (WinCLIP zero-shot)


@attrs.frozen
class InputSpec:
    """Images the detector expects: size and the normalisation of its backbone."""

    image_size: tuple[int, int] = (256, 256)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    #: Frames per sample: 1 for image detectors; a video detector asks for clips of
    #: ``clip_length`` frames, ``frame_stride`` apart, ending at the scored frame
    #: (it then receives :class:`adcore.batch.VideoBatch`).
    clip_length: int = 1
    frame_stride: int = 1

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """RGB pixels in 0..255 (uint8 or float), channels at dim -3 -> the detector's input."""
        mean = torch.tensor(self.mean, device=pixels.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=pixels.device).view(3, 1, 1)
        return (pixels.float() / 255.0 - mean) / std


@attrs.frozen
class DetectorOutput:
    """One batch of predictions, in raw (un-normalised) score units.

    ``pred_score`` is (N,) float; ``anomaly_map`` is (N, 1, H, W) float at the input
    size, or None for methods that only score whole images. ``regions`` is for methods that
    score regions (R-KDE, AI-VAD): one (K, 5) float tensor per image, rows
    ``(x0, y0, x1, y1, score)`` in input-pixel coordinates, or None.
    """

    pred_score: torch.Tensor
    anomaly_map: torch.Tensor | None = None
    regions: list[torch.Tensor] | None = None

    @classmethod
    def from_map(cls, anomaly_map: torch.Tensor) -> DetectorOutput:
        """The usual case: the image score is the map's maximum."""
        return cls(pred_score=anomaly_map.flatten(1).amax(dim=1), anomaly_map=anomaly_map)


@runtime_checkable
class FeatureExtractor(Protocol):
    """Images (N, 3, H, W) in, a list of feature maps (N, C_i, H_i, W_i) out."""

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]: ...

    @property
    def channels(self) -> list[int]: ...

    @property
    def strides(self) -> list[int]: ...


@runtime_checkable
class DensityEstimator(Protocol):
    """Learns the distribution of normal features; scores new ones (higher = rarer)."""

    def fit(self, features: torch.Tensor) -> None: ...

    def score(self, features: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Sampler(Protocol):
    """Picks a representative subset of rows (e.g. a k-center-greedy coreset)."""

    def sample(self, features: torch.Tensor) -> torch.Tensor:
        """Indices (K,) of the rows of ``features`` (N, D) to keep."""
        ...


@runtime_checkable
class AnomalyMapGenerator(Protocol):
    """Turns patch-level scores (N, h, w) or (N, 1, h, w) into a smooth (N, 1, H, W) map."""

    def __call__(self, patch_scores: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor: ...


@runtime_checkable
class Detector(Protocol):
    """A complete anomaly detector, as the loop, checkpoints and the CLI see it."""

    name: str
    learning_type: LearningType

    @property
    def input_spec(self) -> InputSpec: ...

    @property
    def training_spec(self) -> TrainingSpec: ...

    def config_dict(self) -> dict: ...

    def forward(self, images: torch.Tensor) -> DetectorOutput: ...
