"""A tiny generated video dataset in the plain folder layout (tests and the conformance kit).

Each video is a smooth, slowly lit background with two grey squares gliding at 1-2
pixels per frame. Test videos have an anomalous segment: a white square enters and crosses
the frame fast (6 pixels per frame), so it is new both in appearance and in speed; its box
is the frame's mask, and ``test_labels/<name>.txt`` marks the segment. Frames are written
as PNG frame folders (exact pixels), or with ``video_files=True`` as MJPG ``.avi`` files
(needs OpenCV).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    phase = rng.uniform(0, 2 * np.pi, 3)
    base = np.stack([0.35 + 0.15 * np.sin(3 * x + 2 * y + p) for p in phase], axis=-1)
    return base * 255.0


def _square(frame: np.ndarray, x: float, y: float, side: int, value) -> tuple[int, int, int, int]:
    size = frame.shape[0]
    x0, y0 = round(x) % (size - side), round(y) % (size - side)
    frame[y0 : y0 + side, x0 : x0 + side] = value
    return x0, y0, x0 + side, y0 + side


def make_video(
    frames: int, size: int, seed: int, anomaly: tuple[int, int] | None = None
) -> tuple[list[np.ndarray], list[int], list[np.ndarray]]:
    """(frames uint8 (H, W, 3), labels, masks bool (H, W)); ``anomaly`` = [start, stop) frames."""
    rng = np.random.default_rng(seed)
    background = _background(size, rng)
    starts = rng.uniform(0, size, (2, 2))
    velocity = rng.uniform(1.0, 2.0, (2, 2)) * rng.choice([-1, 1], (2, 2))
    side = max(4, size // 8)
    images, labels, masks = [], [], []
    for t in range(frames):
        frame = background * (0.95 + 0.05 * np.sin(t / 7.0))
        for k in range(2):
            x, y = starts[k] + velocity[k] * t
            _square(frame, x, y, side, (90 + 40 * k, 90, 110 - 30 * k))
        mask = np.zeros((size, size), dtype=bool)
        label = 0
        if anomaly is not None and anomaly[0] <= t < anomaly[1]:
            x0, y0, x1, y1 = _square(frame, 6.0 * (t - anomaly[0]), size / 2 - side / 2, side, (255, 255, 255))
            mask[y0:y1, x0:x1] = True
            label = 1
        images.append(np.clip(frame, 0, 255).astype(np.uint8))
        labels.append(label)
        masks.append(mask)
    return images, labels, masks


def _write_video(path: Path, images: list[np.ndarray], fps: float = 10.0) -> None:
    from adcore.data.video_io import cv2_module

    cv2 = cv2_module()
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write MJPG video here")
    for image in images:
        writer.write(np.ascontiguousarray(image[:, :, ::-1]))
    writer.release()


def make_video_folder(
    root: str | Path,
    n_train: int = 3,
    n_test: int = 2,
    frames: int = 24,
    size: int = 64,
    video_files: bool = False,
    masks: bool = True,
) -> Path:
    """Write ``root/{train,test,test_labels,test_masks}``; returns ``root``."""
    root = Path(root)
    for split, count in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for v in range(count):
            name = f"{split}_{v:02d}"
            anomaly = None
            if split == "test":
                # In the second half (after the first clips' context), a quarter of the video long.
                start = frames // 2 if v % 2 == 0 else (5 * frames) // 8
                anomaly = (start, min(frames, start + max(3, frames // 4)))
            images, labels, frame_masks = make_video(frames, size, seed=1000 * (split == "test") + v, anomaly=anomaly)
            if video_files:
                _write_video(root / split / f"{name}.avi", images)
            else:
                (root / split / name).mkdir(exist_ok=True)
                for t, image in enumerate(images):
                    Image.fromarray(image).save(root / split / name / f"{t:04d}.png")
            if split == "test":
                (root / "test_labels").mkdir(exist_ok=True)
                (root / "test_labels" / f"{name}.txt").write_text("".join(f"{label}\n" for label in labels))
                if masks:
                    (root / "test_masks" / name).mkdir(parents=True, exist_ok=True)
                    for t, mask in enumerate(frame_masks):
                        if mask.any():  # frames without a mask file are all-normal
                            Image.fromarray(mask.astype(np.uint8) * 255).save(
                                root / "test_masks" / name / f"{t:04d}.png"
                            )
    return root
