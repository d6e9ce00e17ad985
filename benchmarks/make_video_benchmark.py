"""Build a labelled video anomaly benchmark from real footage (OpenCV's ``vtest.avi``).

``vtest.avi`` (795 frames, 768x576, people walking in a hall; ``/work/shared/datasets/video``)
has no anomalies, so they are made from the footage itself, and every frame is labelled:

* **train** (normal): source frames ``0 .. train_frames-1`` (default 0-499), cut into
  ``train_videos`` consecutive videos (default 5 x 100 frames: several training videos let
  AI-VAD's grouped kNN leave one video out for its score statistics).
* **test**, all from source frames ``train_frames .. 794`` (never seen in training):
  - ``normal_NN``: ``segment`` (80) consecutive frames at normal speed, all labelled 0;
  - ``speed_xK`` (velocity anomalies), one video per factor K in ``--speeds`` (default
    3, 4, 5): ``lead`` (20) normal frames, then ``fast`` (40) frames keeping every K-th source
    frame (the scene played K times faster), then ``lead`` normal frames. A frame is labelled
    1 exactly when it is more than one source frame after the previous frame of its video;
  - ``paste_NN`` (appearance anomalies): ``segment`` frames at normal speed; during the middle
    ``fast`` frames, a rectangle (a quarter of the frame's width and half its height, at a
    seeded place) is replaced by the same rectangle of *another* test clip (a seeded offset),
    flipped upside down: people walking on their heads. Those frames are labelled 1.
  Segment starts, rectangle places and offsets are drawn from ``random.Random(seed)`` and
  printed.

Output, the plain folder layout of ``video:folder:OUT`` (:mod:`adcore.data.video_layouts`):
``OUT/train/<video>/NNNNNN.jpg``, ``OUT/test/<video>/NNNNNN.jpg`` (JPEG quality 95, frames
downscaled by ``--scale``, default 0.5 -> 384x288), ``OUT/test_labels/<video>.txt`` (one
0/1 per line per frame) and ``OUT/construction.json`` (everything printed). OUT must not be
inside the repository.

    python benchmarks/make_video_benchmark.py OUT [--scale 0.5] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from pathlib import Path

import cv2
import numpy as np

SOURCE = Path("/work/shared/datasets/video/vtest.avi")


def read_frames(path: Path, scale: float) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if scale != 1.0:
            frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        frames.append(frame)
    capture.release()
    if not frames:
        raise SystemExit(f"{path}: no frames could be read")
    return frames


def write_video(root: Path, name: str, frames: list[np.ndarray], labels: list[int] | None) -> None:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{index:06d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if labels is not None:
        label_dir = root.parent / "test_labels"
        label_dir.mkdir(parents=True, exist_ok=True)
        (label_dir / f"{name}.txt").write_text("".join(f"{v}\n" for v in labels))


def speed_labels(sources: list[int]) -> list[int]:
    return [0] + [int(b - a > 1) for a, b in itertools.pairwise(sources)]


def build(
    out: Path,
    source: Path = SOURCE,
    scale: float = 0.5,
    seed: int = 0,
    train_frames: int = 500,
    train_videos: int = 5,
    speeds: tuple[int, ...] = (3, 4, 5),
    normal_videos: int = 2,
    paste_videos: int = 2,
    segment: int = 80,
    lead: int = 20,
    fast: int = 40,
    max_frames: int | None = None,
) -> dict:
    """Write the benchmark to ``out``; returns (and prints) its construction."""
    out = Path(out).resolve()
    repo = Path(__file__).resolve().parents[1]
    if out == repo or repo in out.parents:
        raise SystemExit(f"{out}: write the benchmark outside the repository ({repo})")
    frames = read_frames(source, scale)
    if max_frames is not None:
        frames = frames[:max_frames]
    total = len(frames)
    if train_frames >= total:
        raise SystemExit(f"{source}: {total} frames, cannot train on {train_frames}")
    rng = random.Random(seed)
    construction: dict = {"source": str(source), "frames": total, "scale": scale, "seed": seed, "train": {}, "test": {}}

    per_video = train_frames // train_videos
    for v in range(train_videos):
        sources = list(range(v * per_video, (v + 1) * per_video))
        write_video(out / "train", f"train_{v:02d}", [frames[i] for i in sources], None)
        construction["train"][f"train_{v:02d}"] = [sources[0], sources[-1]]

    test_start = train_frames

    def start_for(span: int) -> int:
        if test_start + span > total:
            raise SystemExit(f"a test video needs {span} source frames; only {total - test_start} after training")
        return rng.randint(test_start, total - span)

    for v in range(normal_videos):
        s = start_for(segment)
        sources = list(range(s, s + segment))
        write_video(out / "test", f"normal_{v:02d}", [frames[i] for i in sources], [0] * segment)
        construction["test"][f"normal_{v:02d}"] = {"kind": "normal", "source_frames": [sources[0], sources[-1]]}

    for k in speeds:
        s = start_for(lead + fast * k + lead)
        sources = list(range(s, s + lead))
        sources += [sources[-1] + k * (i + 1) for i in range(fast)]
        sources += [sources[-1] + i + 1 for i in range(lead)]
        labels = speed_labels(sources)
        name = f"speed_x{k}"
        write_video(out / "test", name, [frames[i] for i in sources], labels)
        construction["test"][name] = {
            "kind": "velocity",
            "factor": k,
            "source_frames": sources,
            "anomalous_frames": [i for i, v in enumerate(labels) if v],
        }

    height, width = frames[0].shape[:2]
    for v in range(paste_videos):
        s = start_for(segment)
        donor = start_for(segment)
        while abs(donor - s) < segment // 2 and total - test_start > 2 * segment:
            donor = start_for(segment)
        rw, rh = width // 4, height // 2
        x0, y0 = rng.randint(0, width - rw), rng.randint(0, height - rh)
        dx, dy = rng.randint(0, width - rw), rng.randint(0, height - rh)
        begin = (segment - fast) // 2
        out_frames, labels = [], []
        for i in range(segment):
            frame = frames[s + i].copy()
            anomalous = begin <= i < begin + fast
            if anomalous:
                patch = frames[donor + i][dy : dy + rh, dx : dx + rw]
                frame[y0 : y0 + rh, x0 : x0 + rw] = patch[::-1]  # upside down
            out_frames.append(frame)
            labels.append(int(anomalous))
        name = f"paste_{v:02d}"
        write_video(out / "test", name, out_frames, labels)
        construction["test"][name] = {
            "kind": "appearance",
            "source_frames": [s, s + segment - 1],
            "donor_frames": [donor, donor + segment - 1],
            "donor_box": [dx, dy, dx + rw, dy + rh],
            "pasted_box_upside_down": [x0, y0, x0 + rw, y0 + rh],
            "anomalous_frames": [begin, begin + fast - 1],
        }
    (out / "construction.json").write_text(json.dumps(construction, indent=1))
    return construction


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (outside the repository)")
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--scale", type=float, default=0.5, help="downscale factor of the frames (default 0.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-frames", type=int, default=500)
    parser.add_argument("--train-videos", type=int, default=5)
    parser.add_argument("--speeds", type=lambda s: tuple(int(v) for v in s.split(",")), default=(3, 4, 5))
    parser.add_argument("--segment", type=int, default=80)
    args = parser.parse_args(argv)
    construction = build(
        args.out,
        args.source,
        args.scale,
        args.seed,
        args.train_frames,
        args.train_videos,
        args.speeds,
        segment=args.segment,
    )
    for name, entry in construction["train"].items():
        print(f"train {name}: source frames {entry[0]}-{entry[1]}")
    for name, entry in construction["test"].items():
        summary = {k: v for k, v in entry.items() if k != "source_frames" or entry["kind"] != "velocity"}
        if entry["kind"] == "velocity":
            summary["source_frames"] = f"{entry['source_frames'][0]}..{entry['source_frames'][-1]}"
            frames = entry["anomalous_frames"]
            summary["anomalous_frames"] = f"{frames[0]}-{frames[-1]}" if frames else "none"
        print(f"test {name}: {summary}")
    print(f"wrote {args.out} (scale {args.scale}, seed {args.seed})", file=sys.stderr)


if __name__ == "__main__":
    main()
