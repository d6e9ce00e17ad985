"""ELPV: 2,624 real solar-cell electroluminescence images shipped on PyPI (``elpv-dataset``).

Buerhop-Lutz et al. 2018 / Deitsch et al. 2019; CC BY-NC-SA 4.0. Each 300x300 cell has
a defect probability from experts (0, 1/3, 2/3, 1). adcore's split: probability 0 is
normal, >= 2/3 anomalous, 1/3 (experts unsure) left out; 75 % of the normal cells
(seeded) train, the rest test. Labels are image-level only: there are no masks.
"""

from __future__ import annotations

import random
from pathlib import Path

from adcore.data.dataset import ImageRecord

CELL_TYPES = ("mono", "poly")


def elpv_root() -> Path:
    try:
        import elpv_dataset
    except ImportError:
        raise ImportError("the ELPV dataset is not installed: pip install elpv-dataset") from None
    return Path(elpv_dataset.__file__).parent / "data"


def elpv_records(
    cell_type: str = "mono", train_fraction: float = 0.75, seed: int = 0
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(train records, test records) for "mono", "poly" or "all" cells."""
    if cell_type not in (*CELL_TYPES, "all"):
        raise ValueError(f"ELPV cell type must be one of {CELL_TYPES + ('all',)}, not {cell_type!r}")
    root = elpv_root()
    normals, anomalous = [], []
    for line in (root / "labels.csv").read_text().splitlines():
        if not line.strip():
            continue
        relative, probability, kind = line.split()
        if cell_type != "all" and kind != cell_type:
            continue
        p = float(probability)
        if p == 0.0:
            normals.append(ImageRecord(root / relative, label=0, defect_type=f"{kind}/good"))
        elif p >= 0.5:
            anomalous.append(ImageRecord(root / relative, label=1, defect_type=f"{kind}/defective"))
    random.Random(seed).shuffle(normals)
    n_train = round(len(normals) * train_fraction)
    by_path = lambda r: r.path
    return sorted(normals[:n_train], key=by_path), sorted(normals[n_train:], key=by_path) + sorted(
        anomalous, key=by_path
    )
