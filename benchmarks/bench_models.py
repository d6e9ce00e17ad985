"""Accuracy, speed and memory of adcore's models on one MVTec category, side by side.

Each configuration runs in its own process so its peak RSS is its own. Prints one table:
image/pixel AUROC, AUPRO, fit seconds, test images/s, peak RSS, and the bare backbone's
forward throughput at the same size and batch (the ceiling inference cannot beat).

    python benchmarks/bench_models.py --data ../shared/datasets/mvtec_ad/bottle
    python benchmarks/bench_models.py --data ... --runs padim,padim-bf16 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

#: name -> (detector, parameters, engine precision)
RUNS = {
    "padim": ("padim", {}, "fp32"),
    "padim-bf16": ("padim", {}, "bf16"),
    "stfpm": ("stfpm", {}, "fp32"),
    "stfpm-bf16-inference": ("stfpm", {}, "bf16-inference"),
    "csflow": ("csflow", {}, "fp32"),
    "cflow": ("cflow", {}, "fp32"),
    "cflow-bf16-inference": ("cflow", {}, "bf16-inference"),
    "patchcore": ("patchcore", {}, "fp32"),
    "patchcore-1pct": ("patchcore", {"coreset_sampling_ratio": 0.01}, "fp32"),
    "patchcore-25pct": ("patchcore", {"coreset_sampling_ratio": 0.25}, "fp32"),
    "dfkde": ("dfkde", {}, "fp32"),
    "dfm": ("dfm", {}, "fp32"),
    "dfm-nll": ("dfm", {"score_type": "nll"}, "fp32"),
    "cfa": ("cfa", {}, "fp32"),
    "uflow": ("uflow", {}, "fp32"),
    "uflow-no-standardize": ("uflow", {"standardize": False}, "fp32"),
    "fastflow": ("fastflow", {}, "fp32"),
    # The paper's start (LayerNorm affine at 1 and 0) and learning rate: adcore's previous default.
    "fastflow-identity-init": ("fastflow", {"norm_init": "identity", "learning_rate": 1e-3}, "fp32"),
    "reverse_distillation": ("reverse_distillation", {}, "fp32"),
    "reverse_distillation-bf16-inference": ("reverse_distillation", {}, "bf16-inference"),
    "reverse_distillation-multiply": ("reverse_distillation", {"map_fusion": "multiply"}, "fp32"),
    "efficientad": ("efficientad", {"penalty_images": "{datasets}/imagenet_samples"}, "fp32"),
    "efficientad-bf16": ("efficientad", {"penalty_images": "{datasets}/imagenet_samples"}, "bf16"),
    "efficientad-medium": ("efficientad", {"model_size": "medium", "penalty_images": "{datasets}/imagenet_samples"}, "bf16"),
    "draem": ("draem", {"image_size": 128, "textures": "{datasets}/dtd_subset"}, "fp32"),
    "ganomaly": ("ganomaly", {"image_size": 32}, "fp32"),  # 256 px would be a 189 M-parameter GAN
    "rkde": ("rkde", {}, "fp32"),
}

#: Where "{datasets}" in a run's parameters points: the real data beside the repository.
DATASETS = os.environ.get("ADCORE_DATASETS", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def run_child(command: list[str], label: str) -> dict | None:
    """Run one measurement in its own process (its own peak RSS); its last stdout line is a JSON row."""
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(f"{label} failed:\n{result.stderr[-3000:]}", file=sys.stderr)
        return None
    row = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"done: {row}", file=sys.stderr)
    return row


def run_one(
    name: str, data: str, image_size: int | tuple[int, int] | None, batch_size: int, epochs: int | None
) -> dict:
    """One run in this process. ``data``: a data spec (``mvtec:PATH``, ``elpv:mono``, ...) or an MVTec folder.

    ``image_size``: N (a square), (H, W), or None for what ``adcore fit`` gives the detector on
    this data (the images' aspect ratio kept); a run's own ``image_size`` parameter wins.
    """
    import torch
    from adcore import default_input_size
    from adcore.data import AnomalyDataset, load_data
    from adcore.engine import Engine
    from adcore.plugins import create_detector, get_registry

    detector_name, params, precision = RUNS[name]
    params = {k: v.format(datasets=DATASETS) if isinstance(v, str) else v for k, v in params.items()}
    splits = load_data(data if ":" in data else f"mvtec:{data}")
    size = params.pop("image_size", image_size)  # a run may fix its own input size
    if size is None:
        size = default_input_size(get_registry().detector_class(detector_name), splits.train)
    if isinstance(size, int):
        size = (size, size)
    detector = create_detector(detector_name, seed=0, **params, **({} if size is None else {"image_size": tuple(size)}))
    gradient = detector.training_spec.kind.value == "gradient"
    train = AnomalyDataset(splits.train, detector.input_spec, cache=gradient)
    test = AnomalyDataset(splits.test, detector.input_spec, has_masks=splits.has_masks)
    fit_precision = "fp32" if precision == "bf16-inference" else precision
    engine = Engine(progress=False, batch_size=batch_size, precision=fit_precision, epochs=epochs, log=lambda m: None)
    report = engine.fit(detector, train, None)
    engine.precision = "bf16" if precision == "bf16-inference" else fit_precision
    engine.predict(detector, AnomalyDataset(splits.test[:batch_size], detector.input_spec))  # warm-up
    metrics, _ = engine.test(detector, test)
    epochs_run = len(report["history"]) or None
    return {
        "run": name,
        "image_auroc": metrics.get("image_auroc"),
        "pixel_auroc": metrics.get("pixel_auroc"),
        "pixel_aupro": metrics.get("pixel_aupro"),
        "fit_s": report["fit_seconds"],
        "epochs": epochs_run,
        "test_img_s": metrics["test_images_per_second"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "image_size": list(detector.input_spec.image_size),
    }


def backbone_throughput(backbone: str, image_size: int, batch_size: int, precision: str, repeats: int = 6) -> float:
    """Images/s of the complete timm classifier (random weights: speed does not depend on them)."""
    import timm
    import torch

    model = timm.create_model(backbone, pretrained=False).eval()
    images = torch.randn(batch_size, 3, image_size, image_size)
    if precision.endswith("channels_last"):
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.startswith("bf16"))
    with torch.inference_mode(), autocast:
        model(images)
        started = time.perf_counter()
        for _ in range(repeats):
            model(images)
    return repeats * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="an MVTec AD category folder")
    parser.add_argument("--runs", default="padim,padim-bf16,stfpm,stfpm-bf16-inference")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, help="override epochs of gradient-trained models")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.data, args.image_size, args.batch_size, args.epochs)))
        return

    rows = []
    for name in args.runs.split(","):
        command = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--data",
            args.data,
            "--image-size",
            str(args.image_size),
            "--batch-size",
            str(args.batch_size),
        ]
        if args.epochs is not None:
            command += ["--epochs", str(args.epochs)]
        row = run_child(command, name)
        if row is not None:
            rows.append(row)
    backbone = {
        precision: backbone_throughput(args.backbone, args.image_size, args.batch_size, precision)
        for precision in ("fp32", "fp32-channels_last", "bf16-channels_last")
    }
    if args.json:
        print(json.dumps({"runs": rows, "backbone_img_s": backbone}, indent=2))
        return
    print(
        f"data {args.data}, {args.image_size}px, batch {args.batch_size}, {rows[0]['threads'] if rows else '?'} threads"
    )
    header = f"{'run':<22}{'img AUROC':>10}{'pix AUROC':>10}{'AUPRO':>8}{'fit s':>8}{'epochs':>7}{'test img/s':>11}{'peak RSS MB':>12}"
    print(header)
    for r in rows:
        fmt = lambda v, spec: "-" if v is None else format(v, spec)
        print(
            f"{r['run']:<22}{fmt(r['image_auroc'], '.4f'):>10}{fmt(r['pixel_auroc'], '.4f'):>10}{fmt(r['pixel_aupro'], '.3f'):>8}"
            f"{r['fit_s']:>8.1f}{fmt(r['epochs'], 'd'):>7}{r['test_img_s']:>11.1f}{r['peak_rss_mb']:>12.0f}"
        )
    print(
        f"bare {args.backbone} forward (full classifier), img/s: "
        + ", ".join(f"{k} {v:.1f}" for k, v in backbone.items())
    )
    for r in rows:
        print(f"  {r['run']}: test throughput = {r['test_img_s'] / backbone['fp32']:.2f}x the bare fp32 backbone")


if __name__ == "__main__":
    main()
