"""Peak memory of ``test`` over 200 and 20,000 images: it must not grow with the number of images.

One PaDiM (defaults) is fitted once on MVTec AD bottle (or ``--checkpoint`` is reused). Each
size then runs in its own subprocess (a fresh peak): the bottle test images (83, with masks)
repeated and flipped on the fly (none, horizontal, vertical, both) to the asked number, then
what ``adcore test`` does: ``Engine.test`` (predict, then metrics), the predictions table and
50 heatmap panels (written to a temporary folder). The child reports its peak resident memory
(``VmHWM`` from /proc/self/status), wall time and metrics; nothing is copied into the repository.

Past 64 MB of maps and masks the engine writes them to a temporary file and the pixel metrics
are binned (with error bounds): the goal is a peak RSS at 20,000 images within 10 % of the
peak at 200.

    .venv/bin/python benchmarks/bench_memory_flat.py --sizes 200 20000
    .venv/bin/python benchmarks/bench_memory_flat.py --checkpoint RUN/model.safetensors --sizes 200 5000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BOTTLE = Path(os.environ.get("ADCORE_BOTTLE", "/work/shared/datasets/mvtec_ad/bottle"))


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RepeatedFlips:
    """``size`` items cycling over ``base`` (an AnomalyDataset), each pass with another flip."""

    FLIPS = ((), (-1,), (-2,), (-2, -1))

    def __init__(self, base, size: int) -> None:
        self.base, self.size = base, size
        self.has_masks = base.has_masks
        self.records = [base.records[i % len(base)] for i in range(size)]  # for the heatmap panels

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        import torch

        item = dict(self.base[index % len(self.base)])
        dims = self.FLIPS[(index // len(self.base)) % len(self.FLIPS)]
        if dims:
            item["image"] = torch.flip(item["image"], dims)
            item["mask"] = None if item["mask"] is None else torch.flip(item["mask"], dims)
        item["path"] = f"{item['path']}#{index}"
        return item


def child(checkpoint: str, images: int) -> dict:
    import torch
    from adcore.artifacts import predictions_table, write_heatmaps
    from adcore.checkpoint import load_checkpoint
    from adcore.data import AnomalyDataset, load_data
    from adcore.engine import Engine

    detector, _ = load_checkpoint(checkpoint)
    splits = load_data(f"mvtec:{BOTTLE}")
    base = AnomalyDataset(splits.test, detector.input_spec, has_masks=True, cache=True)  # decode each file once
    dataset = RepeatedFlips(base, images)
    engine = Engine(device="cpu", progress=False, log=lambda message: None)
    started = time.perf_counter()
    metrics, predictions = engine.test(detector, dataset)
    tested = time.perf_counter() - started
    rows = predictions_table(detector, predictions)
    with tempfile.TemporaryDirectory(prefix="bench-memory-flat-") as folder:
        panels = write_heatmaps(Path(folder), detector, dataset, predictions, 50)
    return {
        "images": images,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "seconds": round(time.perf_counter() - started, 1),
        "test_seconds": round(tested, 1),
        "images_per_second": round(predictions.images_per_second, 1),
        "on_disk": predictions.on_disk,
        "rows": len(rows),
        "panels": panels,
        "map_shape": list(predictions.maps.shape),
        "threads": torch.get_num_threads(),
        "metrics": {k: v for k, v in metrics.items() if not k.endswith("per_second")},
    }


def fit_once(output: Path) -> Path:
    checkpoint = output / "model.safetensors"
    if not checkpoint.exists():
        command = [
            sys.executable, "-m", "adcore.cli", "fit", "--model", "padim", "--data", f"mvtec:{BOTTLE}",
            "--output", str(output), "--no-progress",
        ]  # fmt: skip
        subprocess.run(command, check=True)
    return checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a fitted PaDiM checkpoint (default: fit one on bottle once)")
    parser.add_argument("--run-dir", default=str(Path(tempfile.gettempdir()) / "bench-memory-flat-padim"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 20000])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.checkpoint, args.child)), flush=True)
        return
    checkpoint = args.checkpoint or str(fit_once(Path(args.run_dir)))
    results = []
    for size in args.sizes:
        command = [sys.executable, __file__, "--checkpoint", checkpoint, "--child", str(size)]
        output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout  # stderr shows
        result = json.loads(output.strip().splitlines()[-1])
        result["load_average"] = os.getloadavg()
        results.append(result)
        print(json.dumps(result), flush=True)
    if len(results) > 1:
        first, last = results[0], results[-1]
        growth = last["peak_rss_mb"] / first["peak_rss_mb"] - 1
        verdict = "within" if growth <= 0.10 else "NOT within"
        print(
            f"peak RSS {first['peak_rss_mb']:.0f} MB at {first['images']} images, {last['peak_rss_mb']:.0f} MB at "
            f"{last['images']}: {growth:+.1%} ({verdict} the 10 % goal)"
        )


if __name__ == "__main__":
    main()
