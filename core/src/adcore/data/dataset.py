"""A torch Dataset over image records, resized and normalised for one detector."""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from adcore.batch import Batch
from adcore.data.image_io import ImageReadError, read_image, read_mask, resized_pixels
from adcore.protocols import InputSpec


@attrs.frozen
class ImageRecord:
    """One image with its ground truth: label 0/1 or None (unknown), optional mask file."""

    path: Path
    label: int | None = None
    mask_path: Path | None = None
    defect_type: str = ""


class AnomalyDataset(Dataset):
    """Decodes records to normalised tensors of the detector's input size.

    ``cache=True`` keeps resized images as uint8 in memory, so training for many epochs
    decodes each file once. ``has_masks`` says whether pixel ground truth exists at all
    (normal images then get an all-zero mask).
    """

    def __init__(self, records: list[ImageRecord], input_spec: InputSpec, has_masks: bool = False, cache: bool = False):
        if not records:
            raise ValueError("dataset is empty: no images found")
        self.records = list(records)
        self.spec = input_spec
        self.has_masks = has_masks
        self.cache = cache
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    @classmethod
    def from_folder(cls, folder: str | Path, input_spec: InputSpec, cache: bool = False) -> AnomalyDataset:
        """Every image under ``folder`` (recursively), unlabelled: an auxiliary stream's images."""
        from adcore.data.image_io import list_images

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: image folder does not exist")
        records = [ImageRecord(p) for p in list_images(folder, recursive=True)]
        if not records:
            raise ValueError(f"{folder}: no images found")
        return cls(records, input_spec, cache=cache)

    def subset(self, indices: list[int]) -> AnomalyDataset:
        """The same dataset restricted to some records (no decoded image is shared)."""
        return AnomalyDataset([self.records[i] for i in indices], self.spec, self.has_masks, self.cache)

    def __len__(self) -> int:
        return len(self.records)

    def _decode(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        record = self.records[index]
        height, width = self.spec.image_size
        original = read_image(record.path)
        pixels = resized_pixels(original, (height, width))
        mask = None
        if self.has_masks:
            if record.mask_path is not None:
                mask_image = read_mask(record.mask_path)
                if mask_image.size != original.size:  # stretching it would mark the wrong pixels
                    (mw, mh), (iw, ih) = mask_image.size, original.size
                    raise ImageReadError(f"mask {record.mask_path} is {mw}x{mh} but image {record.path} is {iw}x{ih}")
                mask_image = mask_image.resize((width, height), Image.NEAREST)
                mask = torch.from_numpy(np.asarray(mask_image) > 127).unsqueeze(0)
            else:
                mask = torch.zeros(1, height, width, dtype=torch.bool)
        return pixels, mask

    def raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The resized uint8 image (3, H, W) and bool mask (1, H, W) or None."""
        if index in self._cache:
            return self._cache[index]
        item = self._decode(index)
        if self.cache:
            self._cache[index] = item
        return item

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.spec.normalize(pixels)

    def __getitem__(self, index: int) -> dict:
        pixels, mask = self.raw(index)
        record = self.records[index]
        return {
            "image": self.normalize(pixels),
            "mask": None if mask is None else mask.float(),
            "label": -1 if record.label is None else record.label,
            "path": str(record.path),
        }


def collate(items: list[dict]) -> Batch:
    labels = torch.tensor([item["label"] for item in items], dtype=torch.long)
    masks = [item["mask"] for item in items]
    return Batch(
        image=torch.stack([item["image"] for item in items]),
        path=[item["path"] for item in items],
        label=None if (labels < 0).any() else labels,
        mask=None if any(m is None for m in masks) else torch.stack(masks),
    )
