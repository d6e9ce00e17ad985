"""The unit of data that flows from datasets through the loop into detectors."""

from __future__ import annotations

import attrs
import torch


@attrs.define
class Batch:
    """A batch of images with whatever ground truth the dataset has.

    ``image`` is (N, 3, H, W) float, already resized and normalised for the detector.
    ``label`` is (N,) long (0 normal, 1 anomalous) or None when unknown; ``mask`` is
    (N, 1, H, W) float in {0, 1} or None when the dataset has no masks.

    During a training Stage, ``auxiliary`` holds one batch of each auxiliary stream the
    stage asked for, and ``augmented`` is True once the detector's ``augment`` changed the
    images (the frozen-feature cache then never serves them).
    """

    image: torch.Tensor
    path: list[str]
    label: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    auxiliary: dict[str, Batch] = attrs.field(factory=dict)
    augmented: bool = False

    def to(self, device: torch.device | str) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)
        return Batch(
            move(self.image),
            self.path,
            move(self.label),
            move(self.mask),
            {name: batch.to(device) for name, batch in self.auxiliary.items()},
            self.augmented,
        )

    def __len__(self) -> int:
        return self.image.shape[0]


@attrs.define
class VideoBatch(Batch):
    """A batch of clips from videos: the unit a video detector (AI-VAD) sees.

    Each sample is a clip of T frames ending at the frame it scores. ``frames`` is
    (N, T, 3, H, W) float, normalised like ``image``; ``image`` is the clip's last frame
    (``frames[:, -1]``), and ``label``/``mask``/``path`` are that frame's, so frame-level
    metrics, thresholds and panels are the image path's, unchanged. ``video`` names each
    clip's video (file or frame folder) and ``frame_index`` (N,) long is the scored frame's
    index in it. Image detectors never see this type unless they are run on video data,
    where they score ``image`` frame by frame.
    """

    frames: torch.Tensor | None = None
    video: list[str] = attrs.field(factory=list)
    frame_index: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> VideoBatch:
        moved = Batch.to(self, device)
        return VideoBatch(
            moved.image,
            moved.path,
            moved.label,
            moved.mask,
            moved.auxiliary,
            moved.augmented,
            frames=None if self.frames is None else self.frames.to(device, non_blocking=True),
            video=self.video,
            frame_index=None if self.frame_index is None else self.frame_index.to(device),
        )
