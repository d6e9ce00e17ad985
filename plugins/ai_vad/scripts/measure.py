"""Measure AI-VAD on the vtest benchmark (benchmarks/make_video_benchmark.py): AUROC per feature
type and per anomaly type, fit and predict frames/s, and peak memory of predict on two video lengths.

    python plugins/ai_vad/scripts/measure.py BENCH_DIR [--json OUT.json]
    python plugins/ai_vad/scripts/measure.py --memory CHECKPOINT VIDEO FRAMES   (one predict, prints peak RSS)

One fit (velocity + deep features, the defaults) gives the three columns: the frame score
of each configuration is computed from the same regions (velocity only: max over regions of
the velocity score; deep only: of the deep score; combined: of their sum, what ``predict``
returns). The AUROC of an anomaly type is over the frames of its test videos plus the
frames of the normal test videos.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from adcore import Engine, create_detector, load_data
from adcore.data.video_dataset import VideoDataset
from adcore.metrics import image_auroc


def memory_run(checkpoint: str, video: str, frames: int) -> None:
    import safetensors.torch
    from adcore.data.video_layouts import video_records

    # The fitted tensors, loaded into a detector of the same config (the core's load_checkpoint
    # smoke-tests with a 4-D image, which a video detector refuses; see the report).
    saved = json.loads(Path(checkpoint).with_suffix(".json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detector = create_detector("ai-vad", **saved)
    detector.load_fitted_state(safetensors.torch.load_file(checkpoint))
    root = Path(video)
    _, test, _ = video_records("folder", root)
    records = [r for r in test if r.frame_index < frames]
    dataset = VideoDataset(records, detector.input_spec)
    started = time.perf_counter()
    Engine(device="cpu", batch_size=8, progress=False, log=lambda m: None).predict(detector, dataset)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"frames": len(records), "peak_rss_mb": round(peak, 1), "seconds": round(seconds, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bench", nargs="?", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--memory", nargs=3, metavar=("CHECKPOINT", "VIDEO_ROOT", "FRAMES"))
    parser.add_argument(
        "--memory-root", type=Path, help="a folder layout with one long test video, for the memory check"
    )
    parser.add_argument("--param", action="append", default=[])
    args = parser.parse_args()
    if args.memory:
        memory_run(args.memory[0], args.memory[1], int(args.memory[2]))
        return
    torch.manual_seed(0)
    params = dict(p.split("=", 1) for p in args.param)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detector = create_detector("ai-vad", **params) if params else create_detector("ai-vad")
    splits = load_data(f"video:folder:{args.bench}")
    spec = detector.input_spec
    train = VideoDataset(splits.train, spec)
    test = VideoDataset(splits.test, spec)
    engine = Engine(device="cpu", batch_size=8, progress=False, log=lambda m: None, seed=0)
    started = time.perf_counter()
    engine.fit(detector, train, calibrate=False)
    fit_seconds = time.perf_counter() - started

    loader = torch.utils.data.DataLoader(test, batch_size=8, shuffle=False, collate_fn=_collate())
    scores: dict[str, list[float]] = {"velocity": [], "deep": [], "combined": []}
    labels, videos = [], []
    started = time.perf_counter()
    detector.eval()
    with torch.inference_mode():
        for batch in loader:
            _, by_type = detector.scores_by_type(batch.frames)
            for i in range(len(batch)):
                per = {name: by_type[name][i] for name in by_type}
                for name in ("velocity", "deep"):
                    scores[name].append(float(per[name].max()) if per[name].numel() else 0.0)
                total = sum(per.values())
                scores["combined"].append(float(total.max()) if total.numel() else 0.0)
            labels += batch.label.tolist()
            videos += [Path(v).name for v in batch.video]
    predict_seconds = time.perf_counter() - started
    labels_t = torch.tensor(labels)
    kinds = {"velocity": "speed_", "appearance": "paste_"}
    table = {}
    for column, values in scores.items():
        values_t = torch.tensor(values)
        row = {"all": image_auroc(values_t, labels_t)}
        for kind, prefix in kinds.items():
            keep = torch.tensor([v.startswith((prefix, "normal_")) for v in videos])
            row[kind] = image_auroc(values_t[keep], labels_t[keep])
        table[column] = row
    result = {
        "train_frames": len(train),
        "test_frames": len(test),
        "fit_seconds": round(fit_seconds, 1),
        "fit_frames_per_second": round(len(train) / fit_seconds, 2),
        "predict_seconds": round(predict_seconds, 1),
        "predict_frames_per_second": round(len(test) / predict_seconds, 2),
        "auroc": {c: {k: round(v, 4) for k, v in row.items()} for c, row in table.items()},
        "load_average": Path("/proc/loadavg").read_text().split()[:3],
    }
    _finish(result, args)
    if args.memory_root:
        import safetensors.torch

        checkpoint = Path(args.json or "ai-vad").with_suffix(".safetensors")
        safetensors.torch.save_file({k: v.contiguous() for k, v in detector.checkpoint_state().items()}, checkpoint)
        checkpoint.with_suffix(".json").write_text(json.dumps(detector.config_dict()))
        result["memory"] = []
        for frames in (100, 400):
            out = subprocess.run(
                [sys.executable, __file__, "--memory", str(checkpoint), str(args.memory_root), str(frames)],
                capture_output=True,
                text=True,
                check=True,
            )
            result["memory"].append(json.loads(out.stdout.strip().splitlines()[-1]))
        _finish(result, args)


def _finish(result: dict, args) -> None:
    print(json.dumps(result, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


def _collate():
    from adcore.data.video_dataset import collate_samples

    return collate_samples


if __name__ == "__main__":
    main()
