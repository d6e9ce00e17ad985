"""A plain folder layout: a folder of normal images, optionally abnormal images and masks.

Masks are matched to abnormal images by file stem (``img.png`` ↔ ``img.png`` or
``img_mask.png``). Without a separate normal test folder, a seeded fraction of the
normal images is held out for testing.
"""

from __future__ import annotations

import random
from pathlib import Path

from adcore.data.dataset import ImageRecord
from adcore.data.image_io import list_images


def _mask_for(image: Path, mask_dir: Path) -> Path:
    for candidate in list_images(mask_dir):
        if candidate.stem in {image.stem, f"{image.stem}_mask"}:
            return candidate
    raise FileNotFoundError(f"{image}: no mask named {image.stem}.* or {image.stem}_mask.* in {mask_dir}")


def folder_records(
    normal_dir: str | Path,
    abnormal_dir: str | Path | None = None,
    mask_dir: str | Path | None = None,
    normal_test_dir: str | Path | None = None,
    normal_test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(train records, test records)."""
    normals = [ImageRecord(p, label=0, defect_type="good") for p in list_images(normal_dir)]
    if not normals:
        raise ValueError(f"{normal_dir}: no normal images found")
    if normal_test_dir is not None:
        train = normals
        test = [ImageRecord(p, label=0, defect_type="good") for p in list_images(normal_test_dir)]
    elif abnormal_dir is not None:
        shuffled = normals[:]
        random.Random(seed).shuffle(shuffled)
        n_test = max(1, round(len(shuffled) * normal_test_fraction))
        test, train = sorted(shuffled[:n_test], key=lambda r: r.path), sorted(shuffled[n_test:], key=lambda r: r.path)
    else:
        train, test = normals, []
    if abnormal_dir is not None:
        masks = Path(mask_dir) if mask_dir is not None else None
        test += [
            ImageRecord(p, label=1, mask_path=_mask_for(p, masks) if masks else None, defect_type="abnormal")
            for p in list_images(abnormal_dir)
        ]
    return train, test
