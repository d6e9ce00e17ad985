"""Video datasets in the layouts people have, as one record per frame.

Every layout gives ``(train, test, has_masks)``: lists of :class:`VideoFrameRecord` (a
video, a frame index, the frame's label 0/1 or None, where its mask comes from). Training
frames are normal (label 0). ``has_masks`` is True only when every test video with an
anomalous frame has pixel masks (a video without them would count as all-normal pixels).

* ``ucsd``: UCSD Ped1/Ped2: ``Train/TrainNNN/*.tif``, ``Test/TestNNN/*.tif``, masks
  ``Test/TestNNN_gt/*.bmp`` (one per frame, sorted); a frame is anomalous iff its mask has
  a pixel. Test videos without ``_gt`` take frame labels from ``Test/UCSDped*.m``
  (``gt_frame = [a:b, ...]``, 1-based) when it is there, else they are unlabelled.
* ``avenue``: CUHK Avenue: ``training_videos/*.avi``, ``testing_videos/*.avi``; frame
  labels from ``ground_truth_demo/testing_label_mask/N_label.mat`` (``volLabel``, one mask
  per frame; a frame is anomalous iff its mask has a pixel). Frame labels only.
* ``shanghaitech``: ``training/videos/*.avi``, ``testing/frames/<name>/*.jpg``, frame
  labels ``testing/test_frame_mask/<name>.npy``, pixel masks ``testing/test_pixel_mask/<name>.npy``
  (T, H, W), read one frame at a time (memory-mapped; headers checked before anything loads).
* ``folder``: ``ROOT/train/`` and ``ROOT/test/`` holding video files and/or frame folders;
  optional ``ROOT/test_labels/<name>.txt`` (one 0/1 per line, one line per frame) and
  ``ROOT/test_masks/<name>/`` (mask images; for a frame folder matched to frames by file
  stem, for a video file by the number in the mask's name = the 0-based frame index; a
  frame without a mask file is all-normal). Without a label file, a video with a mask
  folder takes its labels from the masks.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import attrs
import numpy as np

from adcore.data.image_io import list_images, read_mask
from adcore.data.video_io import VideoReadError, VideoSource, frame_folder, is_video_file, probe_video

LAYOUTS = ("ucsd", "avenue", "shanghaitech", "folder")
#: Label files larger than this are refused before reading (a stranger's file must not exhaust memory).
MAX_LABEL_BYTES = 64 * 1024 * 1024


@attrs.frozen
class NpyFrame:
    """Frame ``index`` of a (T, H, W) ``.npy`` pixel-mask volume (ShanghaiTech)."""

    path: Path
    index: int


@attrs.frozen
class VideoFrameRecord:
    """One frame of one video with its ground truth (``mask``: a mask image, an :class:`NpyFrame`, or None)."""

    source: VideoSource
    frame_index: int
    label: int | None = None
    mask: Path | NpyFrame | None = None
    defect_type: str = ""

    @property
    def path(self) -> str:
        """``frame.jpg`` for a frame folder, ``video.avi#000123`` for a video file: one string per frame."""
        return self.source.frame_path(self.frame_index)

    @property
    def video(self) -> str:
        return str(self.source.path)

    @property
    def mask_path(self) -> Path | None:
        """The image path's name for a mask file (None for ``.npy`` masks)."""
        return self.mask if isinstance(self.mask, Path) else None


def _videos_in(folder: Path) -> list[VideoSource]:
    """Video files and frame folders directly in ``folder``, sorted by name."""
    if not folder.is_dir():
        raise VideoReadError(f"{folder}: folder does not exist")
    sources = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            sources.append(frame_folder(entry))
        elif is_video_file(entry):
            sources.append(probe_video(entry))
    if not sources:
        raise VideoReadError(f"{folder}: no video files (.avi .mp4 .mov .mkv) or frame folders")
    return sources


def _frames(source: VideoSource, labels=None, masks=None, defect_type: str = "") -> list[VideoFrameRecord]:
    return [
        VideoFrameRecord(
            source,
            i,
            None if labels is None else int(labels[i]),
            None if masks is None else masks[i],
            defect_type,
        )
        for i in range(source.frames)
    ]


def _check_size(path: Path) -> None:
    if path.stat().st_size > MAX_LABEL_BYTES:
        raise VideoReadError(f"{path}: label file is {path.stat().st_size} bytes, more than {MAX_LABEL_BYTES}")


def _mask_has_pixels(path: Path) -> bool:
    return bool(np.asarray(read_mask(path)).any())


def read_label_file(path: Path, source: VideoSource) -> list[int]:
    """One 0/1 per line (blank lines ignored), exactly one per frame of ``source``."""
    _check_size(path)
    labels = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        if text not in ("0", "1"):
            raise VideoReadError(f"{path}: line {number} is {text[:20]!r}, expected 0 or 1")
        labels.append(int(text))
    if len(labels) != source.frames:
        raise VideoReadError(f"{path}: {len(labels)} labels but {source.path} has {source.frames} frames")
    return labels


# -- the plain folder layout ---------------------------------------------------------------------


def _folder_masks(mask_dir: Path, source: VideoSource) -> list[Path | None]:
    """Mask files of one video matched to its frames (None: no mask, an all-normal frame)."""
    masks: list[Path | None] = [None] * source.frames
    files = list_images(mask_dir)
    if source.frame_files is not None:
        by_stem = {p.stem: i for i, p in enumerate(source.frame_files)}
        for mask in files:
            index = by_stem.get(mask.stem, by_stem.get(mask.stem.removesuffix("_mask")))
            if index is None:
                raise VideoReadError(f"{mask}: no frame named {mask.stem}.* in {source.path}")
            masks[index] = mask
        return masks
    for mask in files:
        digits = re.findall(r"\d+", mask.stem)
        if not digits:
            raise VideoReadError(f"{mask}: a mask for a video file needs its 0-based frame index in its name")
        index = int(digits[-1])
        if index >= source.frames:
            raise VideoReadError(f"{mask}: frame {index} but {source.path} has {source.frames} frames")
        masks[index] = mask
    return masks


def folder_layout(root: Path) -> tuple[list[VideoFrameRecord], list[VideoFrameRecord], bool]:
    if not (root / "train").is_dir():
        raise VideoReadError(f"{root}: a video folder needs train/ (and test/) holding videos or frame folders")
    train = [r for s in _videos_in(root / "train") for r in _frames(s, [0] * s.frames)]
    test: list[VideoFrameRecord] = []
    has_masks = (root / "test_masks").is_dir()
    if (root / "test").is_dir():
        for source in _videos_in(root / "test"):
            label_file, mask_dir = root / "test_labels" / f"{source.name}.txt", root / "test_masks" / source.name
            labels = read_label_file(label_file, source) if label_file.is_file() else None
            masks = _folder_masks(mask_dir, source) if mask_dir.is_dir() else None
            if labels is None and masks is not None:
                labels = [int(m is not None and _mask_has_pixels(m)) for m in masks]
            if masks is None and labels is not None and any(labels):
                has_masks = False  # anomalous frames without masks: no pixel ground truth
            test += _frames(source, labels, masks)
    return train, test, has_masks


# -- UCSD Ped1 / Ped2 ------------------------------------------------------------------------------


def _ucsd_ranges(test_dir: Path) -> dict[int, list[int]]:
    """``Test/UCSDped*.m``: video number (1-based) -> anomalous frame indices (0-based)."""
    scripts = sorted(test_dir.glob("UCSDped*.m"))
    if not scripts:
        return {}
    _check_size(scripts[0])
    found = re.findall(r"gt_frame\s*=\s*\[([^\]]*)\]", scripts[0].read_text(errors="replace"))
    ranges = {}
    for number, body in enumerate(found, start=1):
        frames = []
        for part in filter(None, (p.strip() for p in body.split(","))):
            low, _, high = part.partition(":")
            try:
                frames += range(int(low) - 1, int(high or low))
            except ValueError:
                raise VideoReadError(f"{scripts[0]}: cannot read gt_frame range {part!r}") from None
        ranges[number] = frames
    return ranges


def ucsd_layout(root: Path) -> tuple[list[VideoFrameRecord], list[VideoFrameRecord], bool]:
    train_dir, test_dir = root / "Train", root / "Test"
    if not (train_dir.is_dir() and test_dir.is_dir()):
        raise VideoReadError(f"{root}: not a UCSD Ped layout (expected Train/ and Test/)")
    sources = [frame_folder(d) for d in sorted(train_dir.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    train = [r for s in sources for r in _frames(s, [0] * s.frames)]
    if not train:
        raise VideoReadError(f"{train_dir}: no TrainNNN frame folders")
    ranges = _ucsd_ranges(test_dir)
    test, has_masks = [], True
    videos = [
        d
        for d in sorted(test_dir.iterdir())
        if d.is_dir() and not d.name.endswith("_gt") and not d.name.startswith(".")
    ]
    if not videos:
        raise VideoReadError(f"{test_dir}: no TestNNN frame folders")
    for folder in videos:
        source = frame_folder(folder)
        gt = test_dir / f"{folder.name}_gt"
        masks, labels = None, None
        if gt.is_dir():
            masks = list_images(gt)
            if len(masks) != source.frames:
                raise VideoReadError(f"{gt}: {len(masks)} masks but {folder} has {source.frames} frames")
            labels = [int(_mask_has_pixels(m)) for m in masks]
        else:
            has_masks = False
            number = int(re.findall(r"\d+", folder.name)[-1]) if re.findall(r"\d+", folder.name) else None
            if number in ranges:
                anomalous = set(ranges[number])
                labels = [int(i in anomalous) for i in range(source.frames)]
        test += _frames(source, labels, masks)
    return train, test, has_masks


# -- CUHK Avenue ---------------------------------------------------------------------------------------


def _avenue_labels(path: Path, source: VideoSource) -> list[int]:
    try:
        from scipy.io import loadmat  # reads data only: no code in a .mat file runs
    except ImportError:
        raise VideoReadError(f"{path}: reading Avenue's .mat labels needs scipy (pip install scipy)") from None
    _check_size(path)
    try:
        volume = loadmat(str(path))["volLabel"]
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign .mat file
        raise VideoReadError(f"{path}: cannot read volLabel ({type(exc).__name__}: {exc})") from None
    masks = list(np.asarray(volume, dtype=object).ravel())
    if len(masks) != source.frames:
        raise VideoReadError(f"{path}: {len(masks)} frame masks but {source.path} has {source.frames} frames")
    return [int(np.asarray(m).any()) for m in masks]


def avenue_layout(root: Path) -> tuple[list[VideoFrameRecord], list[VideoFrameRecord], bool]:
    train_dir, test_dir = root / "training_videos", root / "testing_videos"
    if not (train_dir.is_dir() and test_dir.is_dir()):
        raise VideoReadError(f"{root}: not a CUHK Avenue layout (expected training_videos/ and testing_videos/)")
    train = [r for s in _videos_in(train_dir) for r in _frames(s, [0] * s.frames)]
    label_dir = root / "ground_truth_demo" / "testing_label_mask"
    test = []
    for source in _videos_in(test_dir):
        digits = re.findall(r"\d+", source.name)
        mat = label_dir / f"{int(digits[-1]) if digits else source.name}_label.mat"
        test += _frames(source, _avenue_labels(mat, source) if mat.is_file() else None)
    return train, test, False


# -- ShanghaiTech -----------------------------------------------------------------------------------------


def npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an ``.npy`` header, refusing object arrays and truncated files (nothing loaded)."""
    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version in ((2, 0), (3, 0)):
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except ValueError as exc:
            raise VideoReadError(f"{path}: not a readable .npy file ({exc})") from None
        header = handle.tell()
    if dtype.hasobject:
        raise VideoReadError(f"{path}: .npy holds Python objects; only numeric arrays are read")
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if path.stat().st_size < expected:
        raise VideoReadError(f"{path}: file is truncated ({path.stat().st_size} bytes, header says {expected})")
    return tuple(shape), dtype


def _shanghaitech_labels(path: Path, source: VideoSource) -> list[int]:
    shape, _ = npy_shape(path)
    if shape != (source.frames,):
        raise VideoReadError(f"{path}: frame labels of shape {shape} but {source.path} has {source.frames} frames")
    return [int(v != 0) for v in np.load(path, allow_pickle=False)]


def shanghaitech_layout(root: Path) -> tuple[list[VideoFrameRecord], list[VideoFrameRecord], bool]:
    train_dir, frames_dir = root / "training" / "videos", root / "testing" / "frames"
    if not (train_dir.is_dir() and frames_dir.is_dir()):
        raise VideoReadError(f"{root}: not a ShanghaiTech layout (expected training/videos/ and testing/frames/)")
    train = [r for s in _videos_in(train_dir) for r in _frames(s, [0] * s.frames)]
    test, has_masks = [], True
    for source in _videos_in(frames_dir):
        label_file = root / "testing" / "test_frame_mask" / f"{source.name}.npy"
        pixel_file = root / "testing" / "test_pixel_mask" / f"{source.name}.npy"
        labels = _shanghaitech_labels(label_file, source) if label_file.is_file() else None
        masks = None
        if pixel_file.is_file():
            shape, _ = npy_shape(pixel_file)
            if len(shape) != 3 or shape[0] != source.frames:
                raise VideoReadError(f"{pixel_file}: pixel masks of shape {shape}, expected ({source.frames}, H, W)")
            masks = [NpyFrame(pixel_file, i) for i in range(source.frames)]
        elif labels is None or any(labels):
            has_masks = False
        test += _frames(source, labels, masks)
    return train, test, has_masks


# -- detection and splitting ------------------------------------------------------------------------------


def detect_layout(root: Path) -> str:
    if (root / "Train").is_dir() and (root / "Test").is_dir():
        return "ucsd"
    if (root / "training_videos").is_dir() and (root / "testing_videos").is_dir():
        return "avenue"
    if (root / "training" / "videos").is_dir() and (root / "testing").is_dir():
        return "shanghaitech"
    if (root / "train").is_dir():
        return "folder"
    raise VideoReadError(
        f"{root}: no known video layout (UCSD Train/+Test/, Avenue training_videos/+testing_videos/, "
        "ShanghaiTech training/videos/+testing/, or a folder with train/ and test/)"
    )


def video_records(layout: str, root: Path) -> tuple[list[VideoFrameRecord], list[VideoFrameRecord], bool]:
    if not root.exists():
        raise VideoReadError(f"{root}: video dataset folder does not exist")
    layout = detect_layout(root) if layout == "auto" else layout
    builders = {
        "ucsd": ucsd_layout,
        "avenue": avenue_layout,
        "shanghaitech": shanghaitech_layout,
        "folder": folder_layout,
    }
    return builders[layout](root)


def split_videos(
    records: list[VideoFrameRecord], fraction: float, seed: int
) -> tuple[list[VideoFrameRecord], list[VideoFrameRecord]]:
    """(taken, rest): a seeded share of whole videos; from a single video, its last ``fraction`` of frames.

    Never random frames: neighbouring frames are near copies, so a random split would test on
    frames the detector has all but seen.
    """
    videos: dict[str, list[VideoFrameRecord]] = {}
    for record in records:
        videos.setdefault(record.video, []).append(record)
    if not videos:
        return [], []
    if len(videos) == 1:
        frames = next(iter(videos.values()))
        count = min(len(frames) - 1, max(1, round(len(frames) * fraction)))
        return frames[len(frames) - count :], frames[: len(frames) - count]
    names = sorted(videos)
    random.Random(seed).shuffle(names)
    count = min(len(names) - 1, max(1, round(len(names) * fraction)))
    taken = set(names[:count])
    return (
        [r for r in records if r.video in taken],
        [r for r in records if r.video not in taken],
    )
