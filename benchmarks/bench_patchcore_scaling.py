"""PatchCore fit cost against the number of training images (memory bank size).

    .venv/bin/python benchmarks/bench_patchcore_scaling.py --data /work/shared/datasets/mvtec_ad/bottle

Each size runs in its own process, so peak RSS is that fit's own. Sizes above the number
of training images reuse them flipped (horizontal, vertical, both), which gives new patch
features. Prints n_train, fit seconds, coreset seconds, peak RSS, bank size, and the growth
ratios between successive sizes: features and RSS should grow about linearly; the coreset
time grows with (bank size x selected points) at worst, less thanks to pruning.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from bench_models import run_child  # this folder is on sys.path when run as a script


def run_one(data: str, n_train: int, ratio: float, image_size: int, batch_size: int) -> dict:
    import torch
    from adcore.data import AnomalyDataset, load_data
    from adcore.engine import Engine
    from adcore.plugins import create_detector
    from torch.utils.data import Dataset

    detector = create_detector("patchcore", seed=0, image_size=(image_size, image_size), coreset_sampling_ratio=ratio)
    base = AnomalyDataset(load_data(f"mvtec:{data}").train, detector.input_spec)

    class Repeated(Dataset):
        """``n_train`` images: the originals, then flipped copies."""

        def __len__(self) -> int:
            return n_train

        def __getitem__(self, index: int) -> dict:
            item = dict(base[index % len(base)])
            flips = [[], [2], [1], [1, 2]][(index // len(base)) % 4]
            if flips:
                item["image"] = item["image"].flip(flips)
            return item

    coreset_seconds = []
    fit_end = detector.fit_end

    def timed_fit_end() -> None:
        started = time.perf_counter()
        fit_end()
        coreset_seconds.append(time.perf_counter() - started)

    detector.fit_end = timed_fit_end
    report = Engine(progress=False, batch_size=batch_size, log=lambda m: None).fit(detector, Repeated(), None)
    return {
        "n_train": n_train,
        "fit_s": report["fit_seconds"],
        "coreset_s": coreset_seconds[0],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # CPU seconds (user + system): on a shared machine a steadier measure of cost than wall time.
        "cpu_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_stime,
        "bank_size": int(detector.memory_bank.shape[0]),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="an MVTec AD category folder")
    parser.add_argument("--sizes", default="50,100,200,400")
    parser.add_argument("--ratio", type=float, default=0.1, help="coreset_sampling_ratio")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.data, args.one, args.ratio, args.image_size, args.batch_size)))
        return

    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        command = [
            sys.executable,
            __file__,
            "--one",
            str(n),
            "--data",
            args.data,
            "--ratio",
            str(args.ratio),
            "--image-size",
            str(args.image_size),
            "--batch-size",
            str(args.batch_size),
        ]
        row = run_child(command, f"n_train={n}")
        if row is not None:
            rows.append(row)
    print(
        f"patchcore, coreset_sampling_ratio {args.ratio}, {args.image_size}px, {rows[0]['threads'] if rows else '?'} threads"
    )
    print(
        f"{'n_train':>8}{'fit s':>9}{'coreset s':>11}{'peak RSS MB':>13}{'bank size':>11}{'CPU s':>8}{'x images':>10}{'x fit s':>9}{'x coreset s':>13}{'x RSS':>8}"
    )
    for previous, row in zip([None] + rows[:-1], rows):
        growth = (
            ("", "", "", "")
            if previous is None
            else (
                f"{row['n_train'] / previous['n_train']:.2f}",
                f"{row['fit_s'] / previous['fit_s']:.2f}",
                f"{row['coreset_s'] / previous['coreset_s']:.2f}",
                f"{row['peak_rss_mb'] / previous['peak_rss_mb']:.2f}",
            )
        )
        print(
            f"{row['n_train']:>8}{row['fit_s']:>9.1f}{row['coreset_s']:>11.1f}{row['peak_rss_mb']:>13.0f}{row['bank_size']:>11}{row['cpu_s']:>8.0f}"
            f"{growth[0]:>10}{growth[1]:>9}{growth[2]:>13}{growth[3]:>8}"
        )


if __name__ == "__main__":
    main()
