"""A torch Dataset of clips ending at each scored frame, decoded on demand.

Each sample is one scored frame of a video and the clip that ends at it: ``clip_length``
frames, ``frame_stride`` apart (``InputSpec``). A video's first ``(clip_length - 1) *
frame_stride`` frames have no full clip, so they are never scored (they still serve as
the first clips' context): the first scored frame of every video is frame
``(clip_length - 1) * frame_stride``. An image detector (``clip_length`` 1) scores every frame.

Frames are decoded one at a time (:class:`~adcore.data.video_io.FrameReader`), resized
with Pillow's bilinear filter from 8-bit RGB and normalised exactly like images
(:class:`~adcore.data.dataset.AnomalyDataset`); the last ``(clip_length - 1) * frame_stride
+ 1`` decoded frames are kept (a few more at most), so reading clips in order decodes each
frame once and memory stays flat in the video's length.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from adcore.batch import Batch, VideoBatch
from adcore.data.dataset import collate as image_collate
from adcore.data.image_io import ImageReadError, read_mask, resized_pixels
from adcore.data.video_io import FrameReader, VideoReadError
from adcore.data.video_layouts import NpyFrame, VideoFrameRecord
from adcore.protocols import InputSpec


def clip_indices(frame_index: int, clip_length: int, frame_stride: int) -> list[int]:
    """Frame indices of the clip ending at ``frame_index``, oldest first."""
    return [frame_index - (clip_length - 1 - k) * frame_stride for k in range(clip_length)]


def check_clip_spec(spec: InputSpec) -> tuple[int, int]:
    length, stride = int(spec.clip_length), int(spec.frame_stride)
    if length < 1 or stride < 1:
        raise ValueError(f"clip_length {length} and frame_stride {stride} must both be at least 1")
    return length, stride


class VideoDataset(Dataset):
    """Clips for one detector's ``InputSpec``; ``records`` are the scored frames only."""

    #: The run and the Engine tell video data from image data by this flag.
    is_video = True

    def __init__(
        self, records: list[VideoFrameRecord], input_spec: InputSpec, has_masks: bool = False, cache: bool = False
    ):
        # ``cache`` is accepted for symmetry with AnomalyDataset and ignored: holding every
        # decoded frame would make memory grow with the videos' length.
        if not records:
            raise ValueError("video dataset is empty: no frames found")
        self.spec = input_spec
        self.clip_length, self.frame_stride = check_clip_spec(input_spec)
        first = (self.clip_length - 1) * self.frame_stride
        self.records = [r for r in records if r.frame_index >= first]
        if not self.records:
            longest = max(r.source.frames for r in records)
            raise ValueError(
                f"no frame can be scored: clips of {self.clip_length} frames, {self.frame_stride} apart, need "
                f"videos of at least {first + 1} frames; the longest has {longest}"
            )
        self.has_masks = has_masks
        self.reader = FrameReader()
        self._recent: OrderedDict[tuple[str, int], tuple[torch.Tensor, tuple[int, int]]] = OrderedDict()
        self._keep = first + 2

    def __len__(self) -> int:
        return len(self.records)

    @property
    def frames_decoded(self) -> int:
        """Frames decoded so far (by this process): the laziness tests count them."""
        return self.reader.decoded

    def _frame(self, record: VideoFrameRecord, index: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """Frame ``index`` of the record's video: uint8 (3, H, W) at the input size, and its own (width, height)."""
        key = (record.video, index)
        if key in self._recent:
            self._recent.move_to_end(key)
            return self._recent[key]
        original = self.reader.frame(record.source, index)
        item = resized_pixels(original, self.spec.image_size), original.size
        self._recent[key] = item
        while len(self._recent) > self._keep:
            self._recent.popitem(last=False)
        return item

    def _mask(self, record: VideoFrameRecord, size: tuple[int, int]) -> torch.Tensor | None:
        if not self.has_masks:
            return None
        height, width = self.spec.image_size
        if record.mask is None:
            return torch.zeros(1, height, width, dtype=torch.bool)
        if isinstance(record.mask, NpyFrame):
            volume = np.load(record.mask.path, mmap_mode="r", allow_pickle=False)
            mask_image = Image.fromarray(np.where(np.asarray(volume[record.mask.index]) > 0, 255, 0).astype(np.uint8))
            where = f"{record.mask.path}[{record.mask.index}]"
        else:
            mask_image, where = read_mask(record.mask), str(record.mask)
        if mask_image.size != size:
            (mw, mh), (iw, ih) = mask_image.size, size
            raise ImageReadError(f"mask {where} is {mw}x{mh} but frame {record.path} is {iw}x{ih}")
        mask_image = mask_image.resize((width, height), Image.NEAREST)
        return torch.from_numpy(np.asarray(mask_image) > 127).unsqueeze(0)

    def raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The scored frame, resized uint8 (3, H, W), and its bool mask (1, H, W) or None."""
        record = self.records[index]
        pixels, size = self._frame(record, record.frame_index)
        return pixels, self._mask(record, size)

    def clip(self, index: int) -> torch.Tensor:
        """The clip ending at the scored frame: uint8 (T, 3, H, W), oldest first."""
        record = self.records[index]
        indices = clip_indices(record.frame_index, self.clip_length, self.frame_stride)
        if record.source.frame_files is None and self.frame_stride > 1:
            # A video file decodes every frame between anyway: keep them, so the next clips
            # (the frames in between are the next clips' frames) decode nothing again.
            for i in range(indices[0], indices[-1]):
                self._frame(record, i)
        return torch.stack([self._frame(record, i)[0] for i in indices])

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        frames = self.clip(index)
        _, size = self._frame(record, record.frame_index)
        normalised = self.spec.normalize(frames)
        mask = self._mask(record, size)
        return {
            "image": normalised[-1],
            "frames": normalised,
            "mask": None if mask is None else mask.float(),
            "label": -1 if record.label is None else record.label,
            "path": record.path,
            "video": record.video,
            "frame_index": record.frame_index,
        }


def collate_video(items: list[dict]) -> VideoBatch:
    batch = image_collate(items)
    return VideoBatch(
        batch.image,
        batch.path,
        batch.label,
        batch.mask,
        frames=torch.stack([item["frames"] for item in items]),
        video=[item["video"] for item in items],
        frame_index=torch.tensor([item["frame_index"] for item in items], dtype=torch.long),
    )


def collate_samples(items: list[dict]) -> Batch:
    """The Engine's collate: clips make a :class:`VideoBatch`, images a :class:`Batch`."""
    return collate_video(items) if items and "frames" in items[0] else image_collate(items)


def is_video_dataset(dataset) -> bool:
    """A VideoDataset, possibly inside (nested) ``Subset``s."""
    while hasattr(dataset, "dataset") and not hasattr(dataset, "is_video"):
        dataset = dataset.dataset
    return bool(getattr(dataset, "is_video", False))


__all__ = [
    "VideoDataset",
    "VideoReadError",
    "clip_indices",
    "collate_samples",
    "collate_video",
    "is_video_dataset",
]
