"""The MVTec AD folder layout: ``train/good``, ``test/<defect>``, ``ground_truth/<defect>``."""

from __future__ import annotations

from pathlib import Path

from adcore.data.dataset import ImageRecord
from adcore.data.image_io import list_images

NORMAL = "good"


def is_mvtec_layout(root: Path) -> bool:
    return (root / "train" / NORMAL).is_dir() and (root / "test").is_dir()


def mvtec_records(root: str | Path, split: str) -> list[ImageRecord]:
    """Records of one split ("train" or "test"); every defect image must have its mask."""
    root = Path(root)
    if not is_mvtec_layout(root):
        raise FileNotFoundError(f"{root}: not an MVTec AD category (expected train/good and test/ folders)")
    if split == "train":
        return [ImageRecord(path, label=0, defect_type=NORMAL) for path in list_images(root / "train" / NORMAL)]
    records = []
    for defect_dir in sorted(p for p in (root / "test").iterdir() if p.is_dir()):
        defect = defect_dir.name
        for path in list_images(defect_dir):
            if defect == NORMAL:
                records.append(ImageRecord(path, label=0, defect_type=NORMAL))
                continue
            mask = root / "ground_truth" / defect / f"{path.stem}_mask.png"
            if not mask.is_file():
                problem = "is not a regular file" if mask.exists() else "is missing"
                raise FileNotFoundError(f"{path}: its ground-truth mask {mask} {problem}")
            records.append(ImageRecord(path, label=1, mask_path=mask, defect_type=defect))
    return records
