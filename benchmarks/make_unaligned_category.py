"""An unaligned copy of an MVTec AD category: every image (and its mask) rotated and shifted at random.

Inspection data is often aligned (the same object in the same place in every image), and a
method with per-position statistics profits from it; real lines also deliver parts at any
angle. This turns an aligned category into an unaligned one made of the same real pixels,
to check which defaults depend on alignment without tuning on it:

* each image is rotated by an angle drawn uniformly from [0, 360) degrees about its centre
  and shifted by up to ``--shift`` of its size in x and y (seeded per file), the uncovered
  corners filled by reflection;
* its ground-truth mask gets the same transform (nearest neighbour), so pixel metrics stay exact.

    python benchmarks/make_unaligned_category.py ../shared/datasets/mvtec_ad/bottle /tmp/bottle-unaligned

The output is written outside the repository (it is data); the layout is the input's.
"""

from __future__ import annotations

import argparse
import hashlib
import random
from pathlib import Path

import numpy as np
from PIL import Image


def _transform(seed_text: str, seed: int, shift: float) -> tuple[float, float, float]:
    digest = int(hashlib.sha256(f"{seed}:{seed_text}".encode()).hexdigest()[:16], 16)
    rng = random.Random(digest)
    return rng.uniform(0.0, 360.0), rng.uniform(-shift, shift), rng.uniform(-shift, shift)


def _apply(image: Image.Image, angle: float, dx: float, dy: float, resample) -> Image.Image:
    """Rotate about the centre and shift, filling the uncovered corners by reflection."""
    width, height = image.size
    padded = Image.fromarray(np.pad(np.asarray(image), [(height, height), (width, width)] + [(0, 0)] * (image.mode == "RGB"), mode="reflect"))
    moved = padded.rotate(angle, resample=resample, translate=(dx * width, dy * height))
    return moved.crop((width, height, 2 * width, 2 * height))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="an MVTec AD category folder")
    parser.add_argument("output", type=Path, help="where to write the unaligned copy (outside the repository)")
    parser.add_argument("--shift", type=float, default=0.1, help="largest shift, as a fraction of the size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images = sorted(p for p in (args.source / "train").rglob("*") if p.is_file()) + sorted(
        p for p in (args.source / "test").rglob("*") if p.is_file()
    )
    if not images:
        raise SystemExit(f"{args.source}: no train/ or test/ images (not an MVTec AD category)")
    for path in images:
        relative = path.relative_to(args.source)
        angle, dx, dy = _transform(str(relative), args.seed, args.shift)
        target = args.output / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            _apply(image.convert("RGB"), angle, dx, dy, Image.BILINEAR).save(target.with_suffix(".png"))
        split, defect, name = relative.parts
        mask = args.source / "ground_truth" / defect / f"{Path(name).stem}_mask.png"
        if split == "test" and mask.is_file():
            mask_target = args.output / "ground_truth" / defect / mask.name
            mask_target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(mask) as image:
                _apply(image.convert("L"), angle, dx, dy, Image.NEAREST).save(mask_target)
    print(f"wrote {len(images)} images to {args.output} (rotations in [0, 360), shifts up to {args.shift:.0%}, seed {args.seed})")


if __name__ == "__main__":
    main()
