"""Throughput of exported models on the MVTec bottle test images, against eager PyTorch.

For each model (PaDiM and STFPM by default): fit on the training images (or reuse the
checkpoint in --output), then score every test image with

* eager fp32 and eager bf16 (``torch.autocast``) PyTorch,
* the ONNX export under ONNX Runtime,
* the OpenVINO export in fp32, and at OpenVINO's default precision (bf16 on CPUs with AMX),
* an int8 OpenVINO model quantised after training with NNCF (calibrated on training images),

all in one process, one after the other, the same pre-decoded images (RGB 0..1) and batch
size. Each variant's time is the best of ``--repeats`` passes over the test set (after one
warm-up batch), including the mean/std normalisation (inside the exported graphs). Image and
pixel AUROC of each variant say whether reduced precision costs accuracy.

    python benchmarks/bench_export.py --data ../shared/datasets/mvtec_ad/bottle
    python benchmarks/bench_export.py --data ... --models padim --epochs 3 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def fitted_detector(name: str, data: str, folder: Path, epochs: int | None, batch_size: int):
    """Fit (all training images, calibrated on the test set as ``adcore fit`` does) or reuse the checkpoint."""
    from adcore.checkpoint import load_checkpoint, save_checkpoint
    from adcore.data import AnomalyDataset, load_data
    from adcore.engine import Engine
    from adcore.plugins import create_detector

    path = folder / name / "model.safetensors"
    if path.is_file():
        print(f"{name}: reusing {path}", file=sys.stderr)
        return load_checkpoint(path)[0]
    detector = create_detector(name, seed=0)
    splits = load_data(f"mvtec:{data}")
    gradient = detector.training_spec.kind.value == "gradient"
    engine = Engine(device="cpu", progress=False, batch_size=batch_size, seed=0, epochs=epochs if gradient else None)
    started = time.perf_counter()
    engine.fit(
        detector,
        AnomalyDataset(splits.train, detector.input_spec, cache=True),
        AnomalyDataset(splits.test, detector.input_spec, has_masks=True),
    )
    print(f"{name}: fitted in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(detector, path)
    return detector


def decoded(data: str, spec, split: str):
    """RGB 0..1 (N, 3, H, W) float32, labels and masks of one split, decoded once."""
    import torch
    from adcore.data import AnomalyDataset, load_data

    splits = load_data(f"mvtec:{data}")
    dataset = AnomalyDataset(getattr(splits, split), spec, has_masks=split == "test")
    raws = [dataset.raw(i) for i in range(len(dataset))]
    pixels = torch.stack([r[0] for r in raws]).float() / 255.0
    labels = torch.tensor([r.label for r in dataset.records]) if split == "test" else None
    masks = torch.stack([r[1] for r in raws]).float() if split == "test" else None
    return pixels, labels, masks


def timed(run, batches, repeats: int) -> tuple[float, list]:
    """Best wall time of ``repeats`` passes over ``batches`` (after a warm-up batch), and the last outputs."""
    run(batches[0])
    best, outputs = float("inf"), []
    for _ in range(repeats):
        started = time.perf_counter()
        outputs = [run(b) for b in batches]
        best = min(best, time.perf_counter() - started)
    return best, outputs


#: Op types NNCF may quantise with ``--int8-scope convolutions``: the backbone's arithmetic.
CONVOLUTIONS = {"Convolution", "GroupConvolution"}


def quantize_int8(xml: Path, train_pixels, output: Path, subset: int, scope: str) -> Path:
    """Post-training int8 quantisation with NNCF, calibrated on training images; metadata kept.

    ``scope="convolutions"`` quantises only convolutions (the pretrained backbone) and leaves
    every other op (distances, covariances, flows, normalisation) in fp32; ``"all"`` lets NNCF
    choose (it also quantises the MatMuls of a density head, e.g. PaDiM's Mahalanobis distance).
    """
    import nncf
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml))
    metadata = model.get_rt_info(["adcore"]).astype(str)
    images = [train_pixels[i : i + 1].numpy() for i in range(len(train_pixels))]
    ignored = None
    if scope == "convolutions":
        others = sorted({op.get_type_name() for op in model.get_ops()} - CONVOLUTIONS)
        ignored = nncf.IgnoredScope(types=others, validate=False)
    quantized = nncf.quantize(model, nncf.Dataset(images), subset_size=min(subset, len(images)), ignored_scope=ignored)
    info = json.loads(metadata)
    info["precision"] = f"int8 (NNCF post-training quantisation, {scope})"
    quantized.set_rt_info(json.dumps(info), ["adcore"])
    ov.save_model(quantized, str(output), compress_to_fp16=False)
    return output


def bench_model(name: str, args) -> list[dict]:
    import adcore_runtime
    import numpy as np
    import torch
    from adcore.export import export_detector
    from adcore.metrics import image_auroc, pixel_auroc

    folder = Path(args.output)
    detector = fitted_detector(name, args.data, folder, args.epochs, args.batch_size).cpu().eval()
    spec = detector.input_spec
    pixels, labels, masks = decoded(args.data, spec, "test")
    batches = [pixels[i : i + args.batch_size] for i in range(0, len(pixels), args.batch_size)]
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    rows = []

    def record(variant: str, seconds: float, scores, maps) -> None:
        row = {
            "model": name,
            "variant": variant,
            "images_per_second": len(pixels) / seconds,
            "image_auroc": image_auroc(scores, labels),
            "pixel_auroc": pixel_auroc(maps, masks) if maps is not None else None,
            "load_average": _load_average(),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)

    def wanted(variant: str) -> bool:  # eager fp32 always: it is what the others are compared with
        return not args.variants or variant == "eager fp32" or variant in args.variants.split(",")

    for variant, dtype in (("eager fp32", None), ("eager bf16", torch.bfloat16)):
        if not wanted(variant):
            continue

        def eager(batch, dtype=dtype):
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                out = detector.predict((batch - mean) / std)
            return out.pred_score.float(), None if out.anomaly_map is None else out.anomaly_map.float()

        seconds, outputs = timed(eager, batches, args.repeats)
        maps = None if outputs[0][1] is None else torch.cat([o[1] for o in outputs])
        record(variant, seconds, torch.cat([o[0] for o in outputs]), maps)

    onnx_path = folder / name / "model.onnx"
    xml_path = folder / name / "model.xml"
    checkpoint = folder / name / "model.safetensors"
    if not (xml_path.is_file() and onnx_path.is_file() and onnx_path.stat().st_mtime > checkpoint.stat().st_mtime):
        export_detector(detector, "onnx", onnx_path, check=False)
        export_detector(detector, "openvino", xml_path, onnx_file=onnx_path, check=False)
    variants = [
        ("onnxruntime fp32", onnx_path, {}),
        ("openvino fp32", xml_path, {"precision": "f32"}),
        ("openvino default precision", xml_path, {"precision": None}),
    ]
    if args.int8 and any(wanted(v) for v in ("openvino int8 (NNCF)", "openvino int8, default precision")):
        train_pixels, _, _ = decoded(args.data, spec, "train")
        int8_path = quantize_int8(
            xml_path,
            train_pixels,
            folder / name / f"model-int8-{args.int8_scope}.xml",
            args.int8_subset,
            args.int8_scope,
        )
        variants.append(("openvino int8 (NNCF)", int8_path, {"precision": "f32"}))
        variants.append(("openvino int8, default precision", int8_path, {"precision": None}))
    for variant, path, options in variants:
        if not wanted(variant):
            continue
        model = adcore_runtime.load(path, **options)
        numpy_batches = [b.numpy() for b in batches]
        seconds, outputs = timed(model.run, numpy_batches, args.repeats)
        scores = torch.from_numpy(np.concatenate([o["pred_score"] for o in outputs]))
        maps = (
            torch.from_numpy(np.concatenate([o["anomaly_map"] for o in outputs]))
            if "anomaly_map" in outputs[0]
            else None
        )
        record(variant, seconds, scores, maps)
    base = rows[0]["images_per_second"]
    for row in rows:
        row["speedup_vs_eager_fp32"] = row["images_per_second"] / base
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="an MVTec AD category folder (bottle)")
    parser.add_argument("--models", default="padim,stfpm")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of gradient-trained models (STFPM)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default="runs/bench-export", help="checkpoints and exported files")
    parser.add_argument("--no-int8", dest="int8", action="store_false", help="skip NNCF int8 quantisation")
    parser.add_argument("--int8-subset", type=int, default=100, help="training images NNCF calibrates on")
    parser.add_argument(
        "--int8-scope",
        choices=("convolutions", "all"),
        default="convolutions",
        help="what NNCF quantises: the convolutions only (default) or whatever it chooses",
    )
    parser.add_argument("--variants", help="comma-separated subset of the variants' names to measure (default: all)")
    args = parser.parse_args()
    import torch

    started_load = _load_average()
    rows = []
    for name in args.models.split(","):
        rows += bench_model(name.strip(), args)
    print(
        f"\nbottle test set, batch {args.batch_size}, {torch.get_num_threads()} torch threads, "
        f"best of {args.repeats}; load average {started_load} at start, {_load_average()} at end"
    )
    print("| model | variant | images/s | vs eager fp32 | image AUROC | pixel AUROC |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        pixel = "-" if r["pixel_auroc"] is None else f"{r['pixel_auroc']:.4f}"
        print(
            f"| {r['model']} | {r['variant']} | {r['images_per_second']:.1f} | {r['speedup_vs_eager_fp32']:.2f}x "
            f"| {r['image_auroc']:.4f} | {pixel} |"
        )
    Path(args.output).mkdir(parents=True, exist_ok=True)
    (Path(args.output) / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
