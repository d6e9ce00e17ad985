"""PatchCore fit cost against the number of training images (memory bank size).

    .venv/bin/python benchmarks/bench_patchcore_scaling.py --data /work/shared/datasets/mvtec_ad/bottle

    .venv/bin/python benchmarks/bench_patchcore_scaling.py --data .../bottle --sizes 2000,20000 --evaluate --search faiss

Each size runs in its own process, so peak RSS is that fit's own. Sizes above the number
of training images reuse them flipped, turned and cropped (all variants differ). Prints
n_train, fit seconds, the last coreset block's seconds, peak RSS, bank size, the growth
ratios between successive sizes (fit time should grow about linearly; RSS should stay flat
once the rows pass one coreset block, ``coreset_block_size``) and, with ``--evaluate``,
image and pixel AUROC on the category's test set.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from bench_models import run_child  # this folder is on sys.path when run as a script


def run_one(
    data: str, n_train: int, ratio: float, image_size: int, batch_size: int, evaluate: bool, search: str
) -> dict:
    import torch
    import torch.nn.functional as F
    from adcore.data import AnomalyDataset, load_data
    from adcore.engine import Engine
    from adcore.plugins import create_detector
    from torch.utils.data import Dataset

    detector = create_detector(
        "patchcore", seed=0, image_size=(image_size, image_size), coreset_sampling_ratio=ratio, search=search
    )
    splits = load_data(f"mvtec:{data}")
    base = AnomalyDataset(splits.train, detector.input_spec)

    class Augmented(Dataset):
        """``n_train`` images: the originals, then variants: 4 flips x 4 quarter turns x crops.

        Variant ``v`` of an image: flip ``v % 4``, ``(v // 4) % 4`` quarter turns and, from
        ``v >= 16``, a 90 % crop at an offset drawn from ``v`` (resized back): 20,000 images
        from bottle's 209 are all different.
        """

        def __len__(self) -> int:
            return n_train

        def __getitem__(self, index: int) -> dict:
            item = dict(base[index % len(base)])
            variant = index // len(base)
            image = item["image"]
            flips = [[], [2], [1], [1, 2]][variant % 4]
            if flips:
                image = image.flip(flips)
            image = torch.rot90(image, (variant // 4) % 4, dims=(1, 2))
            if variant >= 16:
                size = image.shape[-1]
                crop = int(0.9 * size)
                g = torch.Generator().manual_seed(variant)
                top, left = (int(v) for v in torch.randint(size - crop + 1, (2,), generator=g))
                window = image[:, top : top + crop, left : left + crop]
                image = F.interpolate(window[None], size=(size, size), mode="bilinear", align_corners=False)[0]
            item["image"] = image.contiguous()
            return item

    coreset_seconds = []
    fit_end = detector.fit_end

    def timed_fit_end() -> None:
        started = time.perf_counter()
        fit_end()
        coreset_seconds.append(time.perf_counter() - started)

    detector.fit_end = timed_fit_end
    engine = Engine(progress=False, batch_size=batch_size, log=lambda m: None)
    report = engine.fit(detector, Augmented(), None)
    fit_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {
        "n_train": n_train,
        "fit_s": report["fit_seconds"],
        # the last block's selection; earlier blocks are selected during the feature pass
        "last_block_s": coreset_seconds[0],
        "peak_rss_mb": fit_rss,
        # CPU seconds (user + system): on a shared machine a steadier measure of cost than wall time.
        "cpu_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_stime,
        "bank_size": int(detector.memory_bank.shape[0]),
        "threads": torch.get_num_threads(),
        "search": search,
    }
    if evaluate:
        test = AnomalyDataset(splits.test, detector.input_spec, has_masks=splits.has_masks)
        metrics, _ = engine.test(detector, test)
        row.update({k: metrics[k] for k in ("image_auroc", "pixel_auroc") if k in metrics})
        row["test_s"] = len(test) / metrics["test_images_per_second"]
        row["peak_rss_with_test_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="an MVTec AD category folder")
    parser.add_argument("--sizes", default="50,100,200,400")
    parser.add_argument("--ratio", type=float, default=0.1, help="coreset_sampling_ratio")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--evaluate", action="store_true", help="also image and pixel AUROC on the test set")
    parser.add_argument("--search", default="exact", choices=("exact", "faiss"), help="nearest-neighbour search")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(
            json.dumps(
                run_one(args.data, args.one, args.ratio, args.image_size, args.batch_size, args.evaluate, args.search)
            )
        )
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
            "--search",
            args.search,
            *(["--evaluate"] if args.evaluate else []),
        ]
        row = run_child(command, f"n_train={n}")
        if row is not None:
            rows.append(row)
    print(
        f"patchcore, coreset_sampling_ratio {args.ratio}, {args.image_size}px, {rows[0]['threads'] if rows else '?'} threads"
    )
    print(
        f"{'n_train':>8}{'fit s':>9}{'last block s':>14}{'peak RSS MB':>13}{'bank size':>11}{'CPU s':>8}{'x images':>10}{'x fit s':>9}{'x RSS':>8}"
        f"{'image AUROC':>13}{'pixel AUROC':>13}{'test s':>8}"
    )
    for previous, row in zip([None] + rows[:-1], rows):
        growth = (
            ("", "", "")
            if previous is None
            else (
                f"{row['n_train'] / previous['n_train']:.2f}",
                f"{row['fit_s'] / previous['fit_s']:.2f}",
                f"{row['peak_rss_mb'] / previous['peak_rss_mb']:.2f}",
            )
        )
        print(
            f"{row['n_train']:>8}{row['fit_s']:>9.1f}{row['last_block_s']:>14.1f}{row['peak_rss_mb']:>13.0f}{row['bank_size']:>11}{row['cpu_s']:>8.0f}"
            f"{growth[0]:>10}{growth[1]:>9}{growth[2]:>8}"
            f"{row.get('image_auroc', float('nan')):>13.4f}{row.get('pixel_auroc', float('nan')):>13.4f}{row.get('test_s', float('nan')):>8.1f}"
        )


if __name__ == "__main__":
    main()
