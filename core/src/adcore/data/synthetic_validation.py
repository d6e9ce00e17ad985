"""Validation images with synthetic anomalies, for users who only have normal images.

``--val-split synthetic:F`` holds out a fraction F of the normal training images; every
second one (by path) gets a synthetic anomaly (:class:`adcore.components.SyntheticAnomalies`)
with its exact mask and label 1. Thresholds are then chosen by F1 on these, as with real
anomalous validation images, instead of a quantile of normal scores.

Each anomalous image is made from a generator seeded by the run's seed and the image's
index, so it is the same whenever it is decoded, in any order. Texture sources are images
from a folder (Describable Textures, say); without one, the image itself (flipped) or smooth
colour noise is pasted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adcore.components.synthetic_anomaly import SyntheticAnomalies
from adcore.data.dataset import AnomalyDataset, ImageRecord
from adcore.data.image_io import list_images, read_image
from adcore.protocols import InputSpec

SYNTHETIC_DEFECT = "synthetic"


class SyntheticValidationSet(AnomalyDataset):
    """Held-out normal images, half of them made anomalous on decoding (label 1, exact mask)."""

    def __init__(
        self,
        records: list[ImageRecord],
        input_spec: InputSpec,
        seed: int = 0,
        textures: str | Path | None = None,
        anomalies: SyntheticAnomalies | None = None,
    ) -> None:
        ordered = sorted(records, key=lambda r: str(r.path))
        marked = [
            ImageRecord(r.path, label=i % 2, defect_type=SYNTHETIC_DEFECT if i % 2 else r.defect_type)
            for i, r in enumerate(ordered)
        ]
        super().__init__(marked, input_spec, has_masks=True, cache=True)
        self.seed = seed
        self.textures = list_images(textures, recursive=True) if textures else []
        if textures and not self.textures:
            raise ValueError(f"{textures}: no texture images found")
        self.anomalies = anomalies or SyntheticAnomalies(anomaly_probability=1.0)

    def _decode(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        pixels, mask = super()._decode(index)
        if self.records[index].label != 1:
            return pixels, mask
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        source = None
        if self.textures:
            texture_path = self.textures[int(torch.randint(len(self.textures), (1,), generator=generator))]
            height, width = pixels.shape[-2:]
            texture = read_image(texture_path).resize((width, height), Image.BILINEAR)
            source = torch.from_numpy(np.asarray(texture).copy()).permute(2, 0, 1)[None].float()
        anomalous, masks = self.anomalies(pixels[None].float(), generator, source)
        return anomalous[0].round().clamp(0, 255).to(torch.uint8), masks[0] > 0.5
