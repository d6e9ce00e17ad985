"""Parse a data argument (``mvtec:PATH``, ``folder:normal=DIR,...``, ``elpv:mono``, ``video:...``, or a path).

Video data: ``video:PATH`` (layout detected), ``video:ucsd:PATH``, ``video:avenue:PATH``,
``video:shanghaitech:PATH`` or ``video:folder:PATH`` (:mod:`adcore.data.video_layouts`);
records are frames, and validation splits take whole videos (or, from a single video, its
last frames), never random frames.

Validation data (for thresholds and normalisation) comes from ``val_split``:

* ``same_as_test`` (default, as in the MVTec benchmark protocol): the test images;
* ``from_test:F``: a seeded, label-stratified fraction F of the test images, removed from test;
* ``from_train:F``: a fraction F of the normal training images, held out of fitting
  (thresholds then come from a quantile of normal scores);
* ``synthetic:F``: a fraction F of the normal training images, held out of fitting, half
  of them turned into synthetic anomalies with exact masks
  (:mod:`adcore.data.synthetic_validation`): F1-calibrated thresholds from normal images only;
* ``none``: no calibration.
"""

from __future__ import annotations

import random
from pathlib import Path

import attrs

from adcore.data.dataset import ImageRecord
from adcore.data.elpv import elpv_records
from adcore.data.folder import folder_records
from adcore.data.mvtec import is_mvtec_layout, mvtec_records


@attrs.define
class DataSplits:
    name: str
    train: list[ImageRecord]
    test: list[ImageRecord]
    val: list[ImageRecord]
    has_masks: bool
    #: The validation records are normal training images to be made half anomalous.
    synthetic_val: bool = False
    #: Records are video frames (:class:`~adcore.data.video_layouts.VideoFrameRecord`): build
    #: :class:`~adcore.data.video_dataset.VideoDataset` from them.
    video: bool = False


def _take_fraction(
    records: list[ImageRecord], fraction: float, seed: int
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Split off a seeded fraction of each label group: (taken, rest)."""
    taken, rest = [], []
    for label in sorted({r.label for r in records}, key=str):
        group = [r for r in records if r.label == label]
        random.Random(seed).shuffle(group)
        n = round(len(group) * fraction)
        taken += group[:n]
        rest += group[n:]
    return sorted(taken, key=lambda r: r.path), sorted(rest, key=lambda r: r.path)


def _parse_options(text: str) -> dict[str, str]:
    options = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"folder data option {part!r} must look like key=value")
        options[key.strip()] = value.strip()
    return options


def load_data(spec: str, val_split: str = "same_as_test", seed: int = 0) -> DataSplits:
    kind, sep, rest = spec.partition(":")
    if not sep and Path(spec).exists():
        kind, rest = "mvtec" if is_mvtec_layout(Path(spec)) else "folder", spec
        if kind == "folder":
            rest = f"normal={spec}"
    if kind == "mvtec":
        root = Path(rest).expanduser()
        train, test, has_masks, name = (
            mvtec_records(root, "train"),
            mvtec_records(root, "test"),
            True,
            f"mvtec:{root.name}",
        )
    elif kind == "folder":
        options = _parse_options(rest)
        unknown = sorted(set(options) - {"normal", "abnormal", "mask", "normal_test"})
        if unknown:
            raise ValueError(f"unknown folder data option(s) {unknown}: use normal, abnormal, mask, normal_test")
        if "normal" not in options:
            raise ValueError("folder data needs normal=DIR (and optionally abnormal=DIR, mask=DIR, normal_test=DIR)")
        train, test = folder_records(
            options["normal"], options.get("abnormal"), options.get("mask"), options.get("normal_test"), seed=seed
        )
        has_masks, name = "mask" in options, f"folder:{Path(options['normal']).name}"
    elif kind == "video":
        return _load_video(spec, rest, val_split, seed)
    elif kind == "elpv":
        train, test = elpv_records(rest or "mono", seed=seed)
        has_masks, name = False, f"elpv:{rest or 'mono'}"
    else:
        raise ValueError(
            f"unknown data source {spec!r}: use mvtec:PATH, folder:normal=DIR[,abnormal=DIR,mask=DIR,normal_test=DIR], elpv[:mono|poly|all], video:[ucsd:|avenue:|shanghaitech:|folder:]PATH or a path"
        )

    mode, _, fraction_text = val_split.partition(":")
    if mode in ("from_test", "from_train", "synthetic") and not (fraction_text and 0.0 < float(fraction_text) < 1.0):
        raise ValueError(f"val_split {val_split!r} needs a fraction between 0 and 1, e.g. {mode}:0.2")
    fraction = float(fraction_text) if fraction_text else 0.0
    if mode == "same_as_test":
        val = test
    elif mode == "from_test":
        val, test = _take_fraction(test, fraction, seed)
    elif mode in ("from_train", "synthetic"):
        normal = [r for r in train if r.label in (0, None)]
        val, train = _take_fraction(normal, fraction, seed)
        if mode == "synthetic" and len(val) < 2:
            raise ValueError(f"val_split {val_split!r} leaves {len(val)} validation image(s); synthetic needs at least 2")
    elif mode == "none":
        val = []
    else:
        raise ValueError(
            f"unknown val_split {val_split!r}: same_as_test, from_test:F, from_train:F, synthetic:F or none"
        )
    if not train:
        raise ValueError(f"{spec}: no training images")
    return DataSplits(name=name, train=train, test=test, val=val, has_masks=has_masks, synthetic_val=mode == "synthetic")


def _load_video(spec: str, rest: str, val_split: str, seed: int) -> DataSplits:
    """``video:[LAYOUT:]PATH`` split as ``val_split`` asks, by whole videos (or one video's last frames)."""
    from adcore.data.video_layouts import LAYOUTS, split_videos, video_records

    layout, sep, path = rest.partition(":")
    if not (sep and layout in LAYOUTS):
        layout, path = "auto", rest
    if not path:
        raise ValueError(f"{spec}: give a folder, e.g. video:folder:PATH or video:PATH")
    root = Path(path).expanduser()
    train, test, has_masks = video_records(layout, root)
    mode, _, fraction_text = val_split.partition(":")
    if mode == "synthetic":
        raise ValueError(
            f"val_split {val_split!r}: synthetic anomalies are made for images; video data uses "
            "same_as_test, from_test:F, from_train:F or none"
        )
    if mode in ("from_test", "from_train") and not (fraction_text and 0.0 < float(fraction_text) < 1.0):
        raise ValueError(f"val_split {val_split!r} needs a fraction between 0 and 1, e.g. {mode}:0.2")
    if mode == "same_as_test":
        val = test
    elif mode == "from_test":
        val, test = split_videos(test, float(fraction_text), seed)
    elif mode == "from_train":
        val, train = split_videos(train, float(fraction_text), seed)
    elif mode == "none":
        val = []
    else:
        raise ValueError(f"unknown val_split {val_split!r}: same_as_test, from_test:F, from_train:F or none")
    if not train:
        raise ValueError(f"{spec}: no training frames")
    return DataSplits(name=f"video:{root.name}", train=train, test=test, val=val, has_masks=has_masks, video=True)
