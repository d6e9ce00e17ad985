"""The ``adcore`` command line: it parses, then calls the library (:mod:`adcore.run`).

A first run needs only a model and data: ``adcore fit --model padim --data mvtec:PATH``.
Nothing heavy is imported at module level: ``adcore --help``, ``--version`` and
``list-plugins`` never import torch or a model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import adcore
from adcore.plugins import LOAD_PLUGINS_ENV, get_registry, set_registry


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's input, reported as one line (imported only when needed)."""
    from adcore.checkpoint import CheckpointError
    from adcore.data import ImageReadError
    from adcore.detector import NotFittedError
    from adcore.engine import TrainingDivergedError
    from adcore.plugins import PluginError
    from adcore.resources import ResourceNotFoundError

    return (
        ImageReadError,
        PluginError,
        ResourceNotFoundError,
        CheckpointError,
        NotFittedError,
        TrainingDivergedError,
        OSError,  # unwritable output, full disk, missing files: the run folder keeps the previous run
        ImportError,
        ValueError,
        KeyError,
    )


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:
        return [_parse_value(part) for part in text.split(",") if part]
    return text


def _parameters(args: argparse.Namespace) -> dict:
    values = {}
    for item in args.param or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param {item!r} must look like name=value")
        values[key.strip()] = _parse_value(value.strip())
    return values


def _aspect_preserving_size(detector_class: type, data: str, args: argparse.Namespace) -> tuple[int, int] | None:
    """The fit's default input size on ``data``: the training images' aspect ratio kept (or None: the config's)."""
    from adcore.data import load_data
    from adcore.input_size import default_input_size

    splits = load_data(data, val_split=args.val_split, seed=args.seed)
    size = default_input_size(detector_class, splits.train)
    base = tuple(detector_class.Config().image_size)
    if size is not None and size != base and os.environ.get("RANK", "0") == "0":
        print(
            f"input size {size[0]}x{size[1]} (height x width): keeps the training images' aspect ratio, "
            f"short side {min(base)} (--image-size {min(base)} squashes them to a square)",
            file=sys.stderr,
        )
    return size


def _detector_from_args(args: argparse.Namespace, data: str | None = None):
    """The detector the flags describe; with ``data`` (fit), its default input size keeps the data's aspect ratio."""
    import attrs

    from adcore.input_size import parse_image_size
    from adcore.plugins import create_detector

    registry = get_registry()
    detector_class = registry.detector_class(args.model)
    values = _parameters(args)
    fields = {f.name for f in attrs.fields(detector_class.Config)}
    image_size = None if args.image_size is None else parse_image_size(args.image_size)
    if image_size is None and data is not None and "image_size" in fields and "image_size" not in values:
        measured = _aspect_preserving_size(detector_class, data, args)
        if measured is not None:
            values["image_size"] = measured
    for flag, key, value in (
        ("--image-size", "image_size", image_size),
        ("--backbone", "backbone", args.backbone),
        ("--weights", "weights", args.weights),
    ):
        if value is not None:
            if key not in fields:
                raise ValueError(f"{flag}: detector '{args.model}' has no '{key}' parameter")
            values[key] = value
    return create_detector(args.model, seed=args.seed, registry=registry, params=values)


def _engine(args: argparse.Namespace):
    import torch

    from adcore.engine import Engine

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA GPU is available here (use --device cpu or auto)")
    return Engine(
        device=args.device,
        seed=args.seed,
        batch_size=args.batch_size,
        precision=args.precision,
        progress=not args.no_progress and sys.stderr.isatty(),
        epochs=getattr(args, "epochs", None),
        steps=getattr(args, "steps", None),
        validate_every=getattr(args, "validate_every", None),
        normal_quantile=getattr(args, "normal_quantile", 0.99),
        num_workers=args.loader_workers,
    )


# -- commands ------------------------------------------------------------------------------
def cmd_list_plugins(args: argparse.Namespace) -> int:
    import attrs

    registry = get_registry()
    plugins = [attrs.asdict(p) for p in registry.plugins.values()]
    if args.json:
        cards = {name: card.to_json() for name, card in registry.detectors.items()}
        print(json.dumps({"plugins": plugins, "detectors": cards, "detector_clashes": registry.clashes}, indent=2))
        return 0
    if not plugins:
        print("no adcore plugins installed (try: pip install adcore-padim)")
    width = max([len(p["name"]) for p in plugins] + [6])
    print(f"{'plugin':<{width}}  {'version':<9} provides")
    for p in plugins:
        provides = ", ".join(
            [f"detector {d}" for d in p["detectors"]] + [f"resources {r}" for r in p["resource_providers"]]
        )
        status = f"ERROR: {p['error'].splitlines()[0]}" if p["error"] else provides or "(nothing)"
        print(f"{p['name']:<{width}}  {p['version'] or '-':<9} {status}")
    for name, owners in registry.clashes.items():
        print(f"CLASH: detector '{name}' is registered by {', '.join(owners)}")
    return 0


def _print_metrics(metrics: dict) -> None:
    from adcore.artifacts import format_metrics

    print(format_metrics(metrics))


def _launch_processes(args: argparse.Namespace) -> int | None:
    """``--nproc N``: start N processes of this command with torchrun (None: run here)."""
    if args.nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {args.nproc}")
    if args.nproc == 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None
    from adcore.distributed import launch

    argv, skip = [], False
    for token in args.argv:
        if skip:
            skip = False
        elif token == "--nproc":
            skip = True
        elif not token.startswith("--nproc="):
            argv.append(token)
    return launch(argv, args.nproc)


def cmd_fit(args: argparse.Namespace) -> int:
    launched = _launch_processes(args)
    if launched is not None:
        return launched
    from adcore.run import CHECKPOINT_NAME, fit_run

    # Seeded: it may draw random weights (STFPM's student). Tiles are square: no aspect to keep.
    detector = _detector_from_args(args, data=args.data if args.tile is None else None)
    output = Path(args.output)
    result = fit_run(
        detector,
        args.data,
        output,
        _engine(args),
        val_split=args.val_split,
        heatmaps=args.heatmaps,
        image_threshold=args.image_threshold,
        pixel_threshold=args.pixel_threshold,
        textures=args.textures,
        tile=args.tile,
        tile_stride=args.tile_stride,
    )
    if result.output is None:  # another process of a multi-process fit: process 0 reports
        return 0
    if result.metrics is not None:
        _print_metrics(result.metrics)
        print(
            f"wrote {output / CHECKPOINT_NAME}, metrics.json, predictions.csv and {result.heatmaps} heatmaps in {output}/heatmaps"
        )
    else:
        print(f"wrote {output / CHECKPOINT_NAME} (no test data: no metrics)")
    if result.report["history"]:
        print(f"wrote the training loss curve to {output / 'loss_curve.png'}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from adcore.run import evaluate_run

    result = evaluate_run(
        args.checkpoint,
        args.data,
        args.output,
        _engine(args),
        heatmaps=args.heatmaps,
        image_threshold=args.image_threshold,
        pixel_threshold=args.pixel_threshold,
        tile=args.tile,
        tile_stride=args.tile_stride,
    )
    _print_metrics(result.metrics)
    return 0


def _collect_images(inputs: list[str]):
    from adcore.data import ImageReadError
    from adcore.data.dataset import ImageRecord
    from adcore.data.image_io import IMAGE_SUFFIXES, list_images

    records = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            records += [ImageRecord(p) for p in list_images(path)]
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise ImageReadError(f"{path}: not an image file (expected one of {sorted(IMAGE_SUFFIXES)})")
            records.append(ImageRecord(path))
        elif path.exists():
            raise ImageReadError(f"{path}: not a regular file or folder")
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    if not records:
        raise ValueError(f"no images found in {', '.join(inputs)}")
    return records


def cmd_predict(args: argparse.Namespace) -> int:
    from adcore.checkpoint import load_checkpoint
    from adcore.run import predict_run

    if (args.checkpoint is None) == (args.model is None):
        raise ValueError("predict needs --checkpoint FILE, or --model NAME for a zero-shot detector")
    if args.checkpoint:
        for flag, value in (
            ("--param", args.param),
            ("--image-size", args.image_size),
            ("--backbone", args.backbone),
            ("--weights", args.weights),
        ):
            if value:
                raise ValueError(f"{flag}: a checkpoint's parameters are fixed; pass them to fit (or use --model)")
        detector, metadata = load_checkpoint(args.checkpoint)
        run = metadata.get("run") if isinstance(metadata.get("run"), dict) else {}
        if args.tile is None and run.get("tile"):  # fitted on tiles: scored on tiles
            args.tile, args.tile_stride = int(run["tile"]), run.get("tile_stride")
            print(f"the checkpoint was fitted on tiles: --tile {args.tile} --tile-stride {args.tile_stride}", file=sys.stderr)
    else:
        detector = _detector_from_args(args)
        if detector.needs_fit:
            raise ValueError(
                f"detector '{args.model}' learns from normal images: fit it first (adcore fit) and pass --checkpoint"
            )
    detector.post_processor.set_manual_threshold(args.image_threshold, args.pixel_threshold)
    output = Path(args.output)
    result = predict_run(
        detector,
        _collect_images(args.inputs),
        output,
        _engine(args),
        table_format=args.format,
        heatmaps=args.heatmaps,
        save_masks=args.save_masks,
        save_maps=args.save_maps,
        tile=args.tile,
        tile_stride=args.tile_stride,
    )
    for row in result.rows:
        verdict = "" if "is_anomalous" not in row else ("  ANOMALOUS" if row["is_anomalous"] else "  normal")
        regions = f"  {len(row['regions'])} region(s)" if "regions" in row else ""
        print(f"{row['path']}: score {row['score']:.4f}{verdict}{regions}")
    written = [f"{result.heatmaps} heatmaps in {output}/heatmaps"]
    written += [f"masks in {output}/masks"] if args.save_masks else []
    written += [f"maps in {output}/maps"] if args.save_maps else []
    print(f"wrote {output / f'predictions.{args.format}'}, {', '.join(written)}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from adcore.export import ExportError, export_checkpoint

    try:
        result = export_checkpoint(args.checkpoint, args.format, args.output, check=not args.no_check)
    except ExportError as exc:  # a model whose forward cannot be traced: one line saying why
        print(f"adcore: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(str(f) for f in result.files)}")
    meta = result.metadata
    height, width = meta["input"]["image_size"]
    print(
        f"input: image (N, 3, {height}, {width}) RGB 0..1, batch {meta['input']['batch']}; "
        f"outputs: {', '.join(meta['outputs'])}"
    )
    if result.check is not None:
        worst = max(result.check.values())
        print(f"checked against PyTorch on random images: largest difference {worst:.2e}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from adcore.serve.app import create_app, run_server
    except ImportError as exc:
        raise ImportError(f"serve needs starlette and uvicorn: pip install 'adcore[serve]' ({exc})") from None
    from adcore.serve.models import load_models

    models = load_models(args.checkpoint, args.exported, device=args.device)
    app = create_app(
        models,
        workers=args.workers,
        max_queue=args.max_queue,
        allow_paths=args.allow_path,
        max_image_bytes=int(args.max_image_mb * 1024**2),
    )
    names = ", ".join(f"{name} ({model.kind})" for name, model in models.items())
    print(f"serving {names} on http://{args.host}:{args.port} (workers {args.workers}, queue {args.max_queue})",
          file=sys.stderr)
    run_server(app, args.host, args.port, graceful_timeout=args.graceful_timeout)
    return 0


# -- parser --------------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same scores (default 0)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--loader-workers",
        type=_non_negative_int,
        default=0,
        help="processes that decode images beside the model (default 0: decoded in this process; "
        "worth it only where cores are spare)",
    )
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


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--param", action="append", metavar="NAME=VALUE", help="detector parameter, repeatable")
    parser.add_argument(
        "--image-size",
        metavar="N|H,W",
        help="input size: N (a square) or H,W (shortcut for --param image_size=); by default fit keeps the "
        "training images' aspect ratio, the short side at the detector's size",
    )
    parser.add_argument("--backbone", help="timm backbone name (shortcut for --param backbone=)")
    parser.add_argument(
        "--weights", help="backbone weights file (.safetensors/.pth), 'auto' or 'none' (random, on request)"
    )
    parser.add_argument(
        "--allow-download", action="store_true", help="allow downloads (weights, resources) when no offline source exists"
    )


def _tiling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tile", type=int, metavar="SIZE", help="score each image as SIZE x SIZE tiles at its own resolution"
    )
    parser.add_argument(
        "--tile-stride", type=int, metavar="S", help="pixels between tile starts (default: SIZE, no overlap)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adcore", description="Visual anomaly detection: fit, test and predict with plugin models."
    )
    parser.add_argument("--version", action="version", version=f"adcore {adcore.__version__}")
    parser.add_argument("--plugins", help=f"comma-separated plugins to load (empty: none); same as {LOAD_PLUGINS_ENV}")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list-plugins", help="installed plugins, their detectors' cards, and errors")
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
    _model_options(fit)
    fit.add_argument("--epochs", type=int, help="override the epochs of the detector's epoch-budgeted stages")
    fit.add_argument("--steps", type=int, help="override the steps of the detector's step-budgeted stages")
    fit.add_argument(
        "--validate-every", type=int, help="gradient training: image AUROC on validation data every N epochs"
    )
    fit.add_argument(
        "--val-split",
        default="same_as_test",
        help="same_as_test | from_test:F | from_train:F | synthetic:F (normal images only: half made anomalous) | none",
    )
    fit.add_argument("--textures", help="folder of texture images for --val-split synthetic:F anomalies (default: none)")
    fit.add_argument(
        "--normal-quantile", type=float, default=0.99, help="threshold quantile when validation has no anomalies"
    )
    fit.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="fit with N processes on this machine (torch.distributed via torchrun; see docs/scale.md)",
    )
    _tiling(fit)
    _common(fit)
    fit.set_defaults(run=cmd_fit)

    test = commands.add_parser("test", help="metrics of a checkpoint on labelled data")
    test.add_argument("--checkpoint", required=True)
    test.add_argument("--data", help="data to test on (default: the data the checkpoint was fitted on)")
    test.add_argument("--output", help="folder for metrics.json, predictions.csv, heatmaps")
    _tiling(test)
    _common(test)
    test.set_defaults(run=cmd_test)

    predict = commands.add_parser("predict", help="score images with a checkpoint (or a zero-shot --model)")
    predict.add_argument("--checkpoint", help="a fitted model (model.safetensors)")
    predict.add_argument("--model", help="a zero-shot detector to use without a checkpoint")
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    predict.add_argument("--output", default="predictions", help="folder for the table and heatmaps")
    predict.add_argument("--format", choices=("csv", "json"), default="csv")
    predict.add_argument(
        "--save-masks", action="store_true", help="write each image's predicted mask (PNG) at its own resolution"
    )
    predict.add_argument(
        "--save-maps", action="store_true", help="write each image's raw anomaly map (float32 .npy) at its own resolution"
    )
    _tiling(predict)
    _model_options(predict)
    _common(predict)
    predict.set_defaults(run=cmd_predict)

    export = commands.add_parser("export", help="export a checkpoint to ONNX, OpenVINO or TorchScript")
    export.add_argument("--checkpoint", required=True, help="a fitted model (model.safetensors)")
    export.add_argument("--format", required=True, choices=("onnx", "openvino", "torchscript"))
    export.add_argument("--output", help="file to write (default: beside the checkpoint, .onnx / .xml / .torchscript.pt)")
    export.add_argument("--no-check", action="store_true", help="skip running the exported file against PyTorch")
    export.set_defaults(run=cmd_export)
    serve = commands.add_parser("serve", help="an HTTP inference service for checkpoints and exported models")
    serve.add_argument("--checkpoint", action="append", metavar="FILE", help="a model.safetensors to serve; repeatable")
    serve.add_argument("--exported", action="append", metavar="FILE", help="an exported .onnx / .xml to serve; repeatable")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="inference threads scoring at once (default 1)")
    serve.add_argument(
        "--max-queue", type=int, default=16, help="requests allowed to wait for a worker; more get 503 (default 16)"
    )
    serve.add_argument(
        "--allow-path", action="append", metavar="DIR", help="let requests name image files under DIR; repeatable"
    )
    serve.add_argument("--max-image-mb", type=float, default=32.0, help="largest accepted image upload (default 32)")
    serve.add_argument(
        "--graceful-timeout", type=float, default=30.0, help="seconds to finish requests in flight on SIGTERM"
    )
    serve.add_argument("--device", default="cpu", help="device for checkpoints: cpu (default), cuda, cuda:1, ...")
    serve.set_defaults(run=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
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
    except Exception as exc:
        if os.environ.get("ADCORE_DEBUG") or not isinstance(exc, _user_errors()):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        if isinstance(exc, OSError) and not str(message).strip():
            message = f"{exc.strerror or type(exc).__name__}: {exc.filename or ''}"
        print(f"adcore: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
