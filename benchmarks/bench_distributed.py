"""One process against several: ``adcore fit --nproc N`` on the same data, same seed.

    .venv/bin/python benchmarks/bench_distributed.py --data /work/shared/datasets/mvtec_ad/bottle \
        --models padim,patchcore,stfpm,fastflow --epochs stfpm=20,fastflow=20

Runs the user's command (``adcore fit --model M --data mvtec:DATA``, defaults, no heatmaps)
with ``--nproc 1`` and ``--nproc N``, timing the whole command from outside, and prints per
model: wall seconds of each, image and pixel AUROC of each, and the largest relative
difference between the two runs' test scores. PaDiM and DFM combine exact sums and PatchCore
gathers the same rows, so their scores should agree to float rounding; gradient models see
the same global batches but other per-process augmentation draws and batch-norm batches,
so their AUROC is compared instead.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def fit(model: str, data: str, output: Path, processes: int, epochs: int | None) -> dict:
    command = [
        sys.executable,
        "-m",
        "adcore",
        "fit",
        "--model",
        model,
        "--data",
        f"mvtec:{data}",
        "--output",
        str(output),
    ]
    command += ["--heatmaps", "0", "--no-progress", "--nproc", str(processes)]
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{model} --nproc {processes} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((output / "metrics.json").read_text())
    with open(output / "predictions.csv") as table:
        scores = [float(row["score"]) for row in csv.DictReader(table)]
    return {"seconds": seconds, "metrics": metrics, "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="an MVTec AD category folder")
    parser.add_argument("--models", default="padim,dfm,patchcore,stfpm,fastflow")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--epochs", default="", help="per-model epoch overrides, e.g. stfpm=20,fastflow=20")
    args = parser.parse_args()
    epochs = {k: int(v) for k, v in (item.split("=") for item in args.epochs.split(",") if item)}
    print(f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f}, data {args.data}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            runs = {n: fit(model, args.data, Path(tmp) / f"{model}-{n}", n, epochs.get(model)) for n in (1, args.nproc)}
            one, many = runs[1], runs[args.nproc]
            relative = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(one["scores"], many["scores"]))
            rows.append((model, epochs.get(model), one, many, relative))
            print(f"done {model}: {one['seconds']:.1f} s vs {many['seconds']:.1f} s", file=sys.stderr)
    n = args.nproc
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    print(
        f"{'model':<10}{'epochs':>7}{'1 proc s':>10}{f'{n} proc s':>10}{'img AUROC 1':>13}{f'img AUROC {n}':>13}"
        f"{'pix AUROC 1':>13}{f'pix AUROC {n}':>13}{'max rel score diff':>20}"
    )
    for model, epoch, one, many, relative in rows:
        a, b = one["metrics"], many["metrics"]
        print(
            f"{model:<10}{epoch if epoch is not None else 'default':>7}{one['seconds']:>10.1f}{many['seconds']:>10.1f}"
            f"{a.get('image_auroc', float('nan')):>13.4f}{b.get('image_auroc', float('nan')):>13.4f}"
            f"{a.get('pixel_auroc', float('nan')):>13.4f}{b.get('pixel_auroc', float('nan')):>13.4f}{relative:>20.2e}"
        )


if __name__ == "__main__":
    main()
