"""End-to-end predict throughput against each model's own pruned backbone, fp32 and bf16.

    .venv/bin/python benchmarks/bench_throughput.py --data /work/shared/datasets/mvtec_ad/bottle

For every feature model (one process each): fit it on the category (gradient models for one
epoch: throughput does not depend on training), then measure in the same process

* **backbone**: the model's own pruned feature extractor (the same layers, input size and
  batch, channels-last) on tensors already in memory: the ceiling for anything built on it;
* **predict**: what ``adcore predict`` spends per image without writing files: decode and
  preprocess the test images, the model, and post-processing (normalised scores, verdicts,
  the table rows): ``Engine.predict`` + ``predictions_table``;

in fp32 and in bf16 (autocast; AMX on CPUs that have it), and prints images/s and the ratio
predict / backbone. The goal of issue 16 is a ratio of at least 0.85. ``decode`` is the test
images decoded, resized and normalised alone (one pass, this process's threads); ``ceiling``
is the ratio predict would have if decoding and the backbone ran one after the other and
nothing else cost anything: ``decode / (decode + backbone)``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bench_models import run_child  # this folder is on sys.path when run as a script

# "name:key=value" sets a parameter (PatchCore with faiss's approximate candidates, re-ranked exactly).
MODELS = (
    "padim",
    "patchcore",
    "patchcore:search=faiss",
    "dfm",
    "dfkde",
    "cfa",
    "stfpm",
    "fastflow",
    "cflow",
    "reverse_distillation",
)


def _backbone(detector):
    from adcore import TimmFeatureExtractor

    for module in detector.modules():
        if isinstance(module, TimmFeatureExtractor):
            return module
    raise ValueError(f"{detector.name}: no timm feature extractor found")


def _images_per_second(run, images: int, repeats: int) -> float:
    run()  # warm-up: allocations, oneDNN primitive creation
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    return images * repeats / (time.perf_counter() - started)


def run_one(name: str, data: str, batch_size: int, repeats: int) -> dict:
    import torch
    from adcore.artifacts import predictions_table
    from adcore.data import AnomalyDataset, load_data
    from adcore.engine import Engine
    from adcore.plugins import create_detector
    from adcore.training import TrainingKind

    model, _, setting = name.partition(":")
    params = dict(item.split("=", 1) for item in setting.split(",") if item)
    detector = create_detector(model, seed=0, image_size=(256, 256), **params)
    splits = load_data(f"mvtec:{data}")
    gradient = detector.training_spec.kind == TrainingKind.GRADIENT
    fit_engine = Engine(progress=False, batch_size=batch_size, log=lambda m: None, epochs=1 if gradient else None)
    fit_engine.fit(detector, AnomalyDataset(splits.train, detector.input_spec), None)
    detector.eval()
    backbone = _backbone(detector)
    test_records = splits.test
    row = {"model": name, "threads": torch.get_num_threads(), "test_images": len(test_records)}

    def decode_pass() -> None:  # decode, resize and normalise every test image, as predict's loader does
        dataset = AnomalyDataset(test_records, detector.input_spec)
        for index in range(len(dataset)):
            dataset[index]

    row["decode"] = _images_per_second(decode_pass, len(test_records), 1)
    for precision in ("fp32", "bf16"):
        engine = Engine(progress=False, batch_size=batch_size, precision=precision, log=lambda m: None)
        x = torch.randn(batch_size, 3, 256, 256).contiguous(memory_format=torch.channels_last)

        def backbone_pass(engine=engine, x=x) -> None:
            with torch.inference_mode(), engine.autocast():
                backbone(x)

        def predict_pass(engine=engine) -> None:
            predictions = engine.predict(detector, AnomalyDataset(test_records, detector.input_spec))
            predictions_table(detector, predictions)

        row[f"backbone_{precision}"] = _images_per_second(backbone_pass, batch_size, max(repeats, 3))
        row[f"predict_{precision}"] = _images_per_second(predict_pass, len(test_records), 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="an MVTec AD category folder")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=6, help="backbone batches timed")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.data, args.batch_size, args.repeats)))
        return
    print(f"load average at the start {os.getloadavg()[0]:.2f}", file=sys.stderr)
    rows = []
    for name in args.models.split(","):
        command = [sys.executable, __file__, "--one", name, "--data", args.data]
        command += ["--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
        row = run_child(command, name)
        if row is not None:
            rows.append(row)
    print(
        f"256 px, batch {args.batch_size}, {rows[0]['threads'] if rows else '?'} threads, load {os.getloadavg()[0]:.2f}"
    )
    # ceiling: the ratio if decoding and the backbone ran one after the other and nothing else cost anything.
    columns = ["decode"] + [f"{name} {p}" for p in ("fp32", "bf16") for name in ("backbone", "predict", "ratio", "ceiling")]
    print(f"{'model':<24}" + "".join(f"{c:>15}" for c in columns))
    for r in rows:
        cells = [f"{r['decode']:.1f}"]
        for p in ("fp32", "bf16"):
            b, e = r[f"backbone_{p}"], r[f"predict_{p}"]
            cells += [f"{b:.1f}", f"{e:.1f}", f"{e / b:.2f}", f"{r['decode'] / (r['decode'] + b):.2f}"]
        print(f"{r['model']:<24}" + "".join(f"{c:>15}" for c in cells))


if __name__ == "__main__":
    main()
