"""The ``adcore`` command line: list-plugins, fit, test, predict.

A first run needs only a model and data: ``adcore fit --model padim --data mvtec:PATH``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import sys
from pathlib import Path

import attrs
import torch

import adcore
from adcore.backbones.feature_extractor import TimmFeatureExtractor
from adcore.backbones.weights import WeightsNotFoundError
from adcore.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from adcore.data import AnomalyDataset, ImageReadError, load_data
from adcore.data.dataset import ImageRecord
from adcore.data.image_io import IMAGE_SUFFIXES, list_images
from adcore.detector import AnomalyDetector, NotFittedError
from adcore.engine import Engine, Predictions, TrainingDivergedError
from adcore.io import atomic_write_json, atomic_write_text
from adcore.plugins import LOAD_PLUGINS_ENV, PluginError, PluginRegistry, create_detector, get_registry, set_registry
from adcore.visualize import render_panel, save_loss_curve, save_panel, tensor_to_uint8

CHECKPOINT_NAME = "model.safetensors"
USER_ERRORS = (
    ImageReadError,
    PluginError,
    WeightsNotFoundError,
    CheckpointError,
    NotFittedError,
    TrainingDivergedError,
    FileNotFoundError,
    ImportError,
    ValueError,
    KeyError,
)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:
        return [_parse_value(part) for part in text.split(",") if part]
    return text


def _detector_from_args(registry: PluginRegistry, args: argparse.Namespace) -> AnomalyDetector:
    detector_class = registry.detector_class(args.model)
    values = {}
    for item in args.param or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--param {item!r} must look like name=value")
        values[key.strip()] = _parse_value(value.strip())
    fields = {f.name for f in attrs.fields(detector_class.Config)}
    for flag, key, value in (
        ("--image-size", "image_size", None if args.image_size is None else (args.image_size, args.image_size)),
        ("--backbone", "backbone", args.backbone),
        ("--weights", "weights", args.weights),
    ):
        if value is not None:
            if key not in fields:
                raise ValueError(f"{flag}: detector '{args.model}' has no '{key}' parameter")
            values[key] = value
    return create_detector(args.model, seed=args.seed, registry=registry, **values)


def _engine(args: argparse.Namespace) -> Engine:
    return Engine(
        device=args.device,
        seed=args.seed,
        batch_size=args.batch_size,
        precision=args.precision,
        progress=not args.no_progress and sys.stderr.isatty(),
        epochs=getattr(args, "epochs", None),
        validate_every=getattr(args, "validate_every", None),
        normal_quantile=getattr(args, "normal_quantile", 0.99),
    )


def _apply_thresholds(detector: AnomalyDetector, args: argparse.Namespace) -> None:
    detector.post_processor.set_manual_threshold(args.image_threshold, args.pixel_threshold)


def _print_metrics(metrics: dict) -> None:
    for key, value in metrics.items():
        print(f"{key:>28}: {value:.4f}" if isinstance(value, float) else f"{key:>28}: {value}")


def _predictions_table(detector: AnomalyDetector, predictions: Predictions) -> list[dict]:
    post = detector.post_processor
    normalized = post.normalize_scores(predictions.scores) if post.is_calibrated else None
    rows = []
    for i, path in enumerate(predictions.paths):
        row = {"path": path, "score": float(predictions.scores[i])}
        if normalized is not None:
            row["normalized_score"] = float(normalized[i])
            row["is_anomalous"] = bool(predictions.scores[i] >= post.image_threshold)
        if predictions.labels is not None:
            row["label"] = int(predictions.labels[i])
        rows.append(row)
    return rows


def _write_table(path: Path, rows: list[dict], fmt: str) -> None:
    if fmt == "json":
        atomic_write_json(path, rows)
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["path", "score"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _write_heatmaps(
    directory: Path, detector: AnomalyDetector, dataset: AnomalyDataset, predictions: Predictions, limit: int
) -> int:
    """Panels for up to ``limit`` images spread evenly over the dataset (all defect types)."""
    post = detector.post_processor
    if not post.is_calibrated or limit <= 0:
        return 0
    count = len(predictions.paths)
    n = min(limit, count)
    chosen = sorted({round(i * (count - 1) / max(n - 1, 1)) for i in range(n)})
    scores = post.normalize_scores(predictions.scores)
    maps = (
        post.normalize_maps(predictions.maps)
        if predictions.maps is not None and not torch.isnan(post.pixel_threshold)
        else None
    )
    for index in chosen:
        pixels, gt_mask = dataset.raw(index)
        record = dataset.records[index]
        panel = render_panel(
            tensor_to_uint8(pixels),
            None if maps is None else maps[index, 0].numpy(),
            float(scores[index]),
            bool(scores[index] >= 0.5),
            None if gt_mask is None else gt_mask[0].numpy(),
        )
        stem = (
            f"{record.defect_type.replace('/', '_')}_{Path(record.path).stem}"
            if record.defect_type
            else Path(record.path).stem
        )
        save_panel(directory / f"{index:04d}_{stem}.png", panel)
    return len(chosen)


def _environment() -> dict:
    return {
        "adcore": adcore.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


# -- commands ------------------------------------------------------------------------------
def cmd_list_plugins(args: argparse.Namespace) -> int:
    registry = get_registry()
    plugins = [attrs.asdict(p) for p in registry.plugins.values()]
    if args.json:
        print(json.dumps({"plugins": plugins, "detector_clashes": registry.clashes}, indent=2))
        return 0
    if not plugins:
        print("no adcore plugins installed (try: pip install adcore-padim)")
    width = max([len(p["name"]) for p in plugins] + [6])
    print(f"{'plugin':<{width}}  {'version':<9} provides")
    for p in plugins:
        provides = ", ".join(
            [f"detector {d}" for d in p["detectors"]] + [f"weights {w}" for w in p["weight_providers"]]
        )
        status = f"ERROR: {p['error'].splitlines()[0]}" if p["error"] else provides or "(nothing)"
        print(f"{p['name']:<{width}}  {p['version'] or '-':<9} {status}")
    for name, owners in registry.clashes.items():
        print(f"CLASH: detector '{name}' is registered by {', '.join(owners)}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    registry = get_registry()
    output = Path(args.output)
    splits = load_data(args.data, val_split=args.val_split, seed=args.seed)
    detector = _detector_from_args(registry, args)  # seeded: it may draw random weights (STFPM's student)
    engine = _engine(args)
    gradient = detector.training_spec.kind.value == "gradient"
    train = AnomalyDataset(splits.train, detector.input_spec, cache=gradient)
    val = AnomalyDataset(splits.val, detector.input_spec, has_masks=splits.has_masks) if splits.val else None
    print(
        f"fitting {detector.name} on {splits.name}: {len(splits.train)} train, {len(splits.val)} validation, {len(splits.test)} test images",
        file=sys.stderr,
    )
    report = engine.fit(detector, train, val, calibrate=False)
    val_predictions = engine.predict(detector, val, description="calibrate") if val is not None else None
    if val_predictions is not None:
        report["calibration"] = engine.calibrate(detector, val_predictions)
    _apply_thresholds(detector, args)
    run = {
        "model": detector.name,
        "data": args.data,
        "data_name": splits.name,
        "val_split": args.val_split,
        "seed": args.seed,
        "epochs_override": args.epochs,
        "precision": args.precision,
        "environment": _environment(),
        "weights_sources": {
            name: module.weights_source
            for name, module in detector.named_modules()
            if isinstance(module, TimmFeatureExtractor)
        },
    }
    save_checkpoint(detector, output / CHECKPOINT_NAME, extra={"run": run})
    report = {**run, **report, "post_processing": detector.post_processor.summary()}
    if splits.test:
        if splits.test is splits.val:  # validation is the test set (the MVTec protocol): score it once
            test, predictions = val, val_predictions
            metrics = engine.evaluate(detector, predictions)
        else:
            test = AnomalyDataset(splits.test, detector.input_spec, has_masks=splits.has_masks)
            metrics, predictions = engine.test(detector, test)
        metrics = {"model": detector.name, "data": splits.name, "fit_seconds": report["fit_seconds"], **metrics}
        atomic_write_json(output / "metrics.json", metrics)
        _write_table(output / "predictions.csv", _predictions_table(detector, predictions), "csv")
        written = _write_heatmaps(output / "heatmaps", detector, test, predictions, args.heatmaps)
        report["metrics"] = metrics
        _print_metrics(metrics)
        print(
            f"wrote {output / CHECKPOINT_NAME}, metrics.json, predictions.csv and {written} heatmaps in {output}/heatmaps"
        )
    else:
        print(f"wrote {output / CHECKPOINT_NAME} (no test data: no metrics)")
    if report["history"]:
        save_loss_curve(report["history"], output / "loss_curve.png", title=f"{detector.name} on {splits.name}")
        print(f"wrote the training loss curve to {output / 'loss_curve.png'}")
    atomic_write_json(output / "report.json", report)
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    detector, metadata = load_checkpoint(args.checkpoint)
    _apply_thresholds(detector, args)
    run = metadata.get("run", {})
    data = args.data or run.get("data")
    if not data:
        raise ValueError("--data is required: the checkpoint does not record its data")
    # Re-split exactly as at fit time, so training and calibration images never leak into the test.
    same_data = data == run.get("data")
    seed = run.get("seed", args.seed) if same_data else args.seed
    splits = load_data(data, val_split=run.get("val_split", "same_as_test") if same_data else "same_as_test", seed=seed)
    if not splits.test:
        raise ValueError(f"{data}: no test images")
    test = AnomalyDataset(splits.test, detector.input_spec, has_masks=splits.has_masks)
    metrics, predictions = _engine(args).test(detector, test)
    metrics = {"model": detector.name, "data": splits.name, **metrics}
    _print_metrics(metrics)
    if args.output:
        output = Path(args.output)
        atomic_write_json(output / "metrics.json", metrics)
        _write_table(output / "predictions.csv", _predictions_table(detector, predictions), "csv")
        _write_heatmaps(output / "heatmaps", detector, test, predictions, args.heatmaps)
    return 0


def _collect_images(inputs: list[str]) -> list[ImageRecord]:
    records = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            records += [ImageRecord(p) for p in list_images(path)]
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise ImageReadError(f"{path}: not an image file (expected one of {sorted(IMAGE_SUFFIXES)})")
            records.append(ImageRecord(path))
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    if not records:
        raise ValueError(f"no images found in {', '.join(inputs)}")
    return records


def cmd_predict(args: argparse.Namespace) -> int:
    detector, _ = load_checkpoint(args.checkpoint)
    _apply_thresholds(detector, args)
    dataset = AnomalyDataset(_collect_images(args.inputs), detector.input_spec)
    predictions = _engine(args).predict(detector, dataset)
    rows = _predictions_table(detector, predictions)
    output = Path(args.output)
    table = output / f"predictions.{args.format}"
    _write_table(table, rows, args.format)
    written = _write_heatmaps(output / "heatmaps", detector, dataset, predictions, args.heatmaps)
    for row in rows:
        verdict = "" if "is_anomalous" not in row else ("  ANOMALOUS" if row["is_anomalous"] else "  normal")
        print(f"{row['path']}: score {row['score']:.4f}{verdict}")
    print(f"wrote {table} and {written} heatmaps in {output}/heatmaps", file=sys.stderr)
    return 0


# -- parser --------------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same scores (default 0)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 uses AMX / tensor cores where present"
    )
    parser.add_argument(
        "--image-threshold", type=float, help="manual image threshold in raw score units (overrides the learned one)"
    )
    parser.add_argument("--pixel-threshold", type=float, help="manual pixel threshold in raw score units")
    parser.add_argument(
        "--heatmaps", type=int, default=50, help="how many heatmap panels to write (default 50, spread over the data)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adcore", description="Visual anomaly detection: fit, test and predict with plugin models."
    )
    parser.add_argument("--version", action="version", version=f"adcore {adcore.__version__}")
    parser.add_argument("--plugins", help=f"comma-separated plugins to load (empty: none); same as {LOAD_PLUGINS_ENV}")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list-plugins", help="installed plugins, what they provide, and errors")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=cmd_list_plugins)

    fit = commands.add_parser("fit", help="fit a detector; test it when the data has test images")
    fit.add_argument("--model", required=True, help="detector name (see adcore list-plugins)")
    fit.add_argument(
        "--data",
        required=True,
        help="mvtec:PATH | folder:normal=DIR[,abnormal=DIR,mask=DIR,normal_test=DIR] | elpv[:mono|poly|all]",
    )
    fit.add_argument("--output", default="runs/latest", help="folder for checkpoint, metrics, report, heatmaps")
    fit.add_argument("--param", action="append", metavar="NAME=VALUE", help="detector parameter, repeatable")
    fit.add_argument("--image-size", type=int, help="square input size (shortcut for --param image_size=)")
    fit.add_argument("--backbone", help="timm backbone name (shortcut for --param backbone=)")
    fit.add_argument(
        "--weights", help="backbone weights file (.safetensors/.pth), 'auto' or 'none' (random, on request)"
    )
    fit.add_argument(
        "--allow-download", action="store_true", help="allow timm hub downloads when no offline weights exist"
    )
    fit.add_argument("--epochs", type=int, help="override the detector's default number of epochs")
    fit.add_argument(
        "--validate-every", type=int, help="gradient training: image AUROC on validation data every N epochs"
    )
    fit.add_argument("--val-split", default="same_as_test", help="same_as_test | from_test:F | from_train:F | none")
    fit.add_argument(
        "--normal-quantile", type=float, default=0.99, help="threshold quantile when validation has no anomalies"
    )
    _common(fit)
    fit.set_defaults(run=cmd_fit)

    test = commands.add_parser("test", help="metrics of a checkpoint on labelled data")
    test.add_argument("--checkpoint", required=True)
    test.add_argument("--data", help="data to test on (default: the data the checkpoint was fitted on)")
    test.add_argument("--output", help="folder for metrics.json, predictions.csv, heatmaps")
    _common(test)
    test.set_defaults(run=cmd_test)

    predict = commands.add_parser("predict", help="score images with a checkpoint")
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    predict.add_argument("--output", default="predictions", help="folder for the table and heatmaps")
    predict.add_argument("--format", choices=("csv", "json"), default="csv")
    _common(predict)
    predict.set_defaults(run=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.plugins is not None:
        os.environ[LOAD_PLUGINS_ENV] = args.plugins
        set_registry(None)
    if getattr(args, "allow_download", False):
        os.environ["ADCORE_ALLOW_DOWNLOAD"] = "1"
    try:
        return args.run(args)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    except USER_ERRORS as exc:
        if os.environ.get("ADCORE_DEBUG"):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"adcore: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
