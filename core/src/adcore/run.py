"""A whole run, callable from Python, the CLI and services: fit → calibrate → save → evaluate → artifacts.

``fit_run`` is what ``adcore fit`` does; ``evaluate_run`` and ``predict_run`` are ``adcore test``
and ``adcore predict``. Each writes its output folder completely or not at all
(:class:`~adcore.run_folder.RunFolder`) and checks that folder before any work.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import attrs
import torch

from adcore import distributed
from adcore.artifacts import environment, predictions_table, write_full_resolution, write_heatmaps, write_table
from adcore.checkpoint import load_checkpoint, start_checkpoint
from adcore.data import AnomalyDataset, load_data
from adcore.data.dataset import ImageRecord
from adcore.data.image_io import read_image
from adcore.data.sources import DataSplits
from adcore.data.synthetic_validation import SyntheticValidationSet
from adcore.detector import AnomalyDetector
from adcore.engine import Engine, Predictions
from adcore.io import atomic_write_json
from adcore.prediction_store import PredictionStore
from adcore.regions import detector_regions, find_regions, scale_regions
from adcore.run_folder import RunFolder
from adcore.tiling import TileDataset, resize_map, score_image, tile_boxes
from adcore.training import TrainingKind
from adcore.visualize import save_loss_curve

CHECKPOINT_NAME = "model.safetensors"

#: Share of the training images held out for thresholds when the data has no validation images.
NORMAL_ONLY_HOLD_OUT = 0.2


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


@attrs.define
class RunResult:
    """What a run produced: its folder, report, metrics (when it had labelled test data), rows."""

    output: Path | None
    report: dict = attrs.Factory(dict)
    metrics: dict | None = None
    rows: list[dict] = attrs.Factory(list)
    heatmaps: int = 0
    predictions: Predictions | None = None


def _weights_sources(detector: AnomalyDetector) -> dict[str, str]:
    return {
        name: module.weights_source for name, module in detector.named_modules() if hasattr(module, "weights_source")
    }


def fit_run(
    detector: AnomalyDetector,
    data: str | DataSplits,
    output: str | os.PathLike,
    engine: Engine | None = None,
    *,
    val_split: str = "same_as_test",
    heatmaps: int = 50,
    image_threshold: float | None = None,
    pixel_threshold: float | None = None,
    textures: str | os.PathLike | None = None,
    say: Callable[[str], None] = _stderr,
    tile: int | None = None,
    tile_stride: int | None = None,
) -> RunResult:
    """Fit ``detector`` on ``data`` (``"mvtec:PATH"``, ... or loaded splits) and write the run to ``output``.

    ``textures`` names a folder of texture images for ``val_split="synthetic:F"`` anomalies.
    ``tile``/``tile_stride``: fit on the tiles of the training images (each tile one input,
    :class:`~adcore.tiling.TileDataset`) and score validation and test images as tiles
    (:func:`score_dataset`); the checkpoint records the tiling, and ``adcore predict``/``test``
    use it by default.
    """
    engine = engine or Engine()
    check_tiling(tile, tile_stride)
    if tile is not None and val_split.startswith("synthetic"):
        raise ValueError("--tile: synthetic validation anomalies are made at the input size; use another --val-split")
    distributed.initialize(engine.torch_device)  # launched by torchrun: process 0 writes the run
    main_process = distributed.is_main_process()
    folder = RunFolder(output)
    if main_process:
        folder.check()  # an unwritable or full output fails now, not after the fit
    splits = load_data(data, val_split=val_split, seed=engine.seed) if isinstance(data, str) else data
    check_data_kind(detector, splits, tile)
    validation_note = None
    if not splits.val and val_split == "same_as_test":
        splits, validation_note = _hold_out_for_thresholds(splits, engine.seed, engine.normal_quantile)
        if main_process:
            say(validation_note["message"])
    spec = detector.training_spec
    cache = spec.kind == TrainingKind.GRADIENT
    if not splits.train:
        train = []
    elif tile is not None:
        train = TileDataset(splits.train, detector.input_spec, tile, tile_stride, cache=cache)
    else:
        train = _dataset(splits, splits.train, detector, cache=cache)
    if not main_process:  # another process of a multi-process fit: its share of the phases, nothing written
        report = engine.fit(detector, train, None, calibrate=False)
        distributed.finish()
        return RunResult(output=None, report=report)
    if splits.synthetic_val:
        val = SyntheticValidationSet(splits.val, detector.input_spec, seed=engine.seed, textures=textures)
    else:
        val = _dataset(splits, splits.val, detector, has_masks=splits.has_masks) if splits.val else None
    with folder as staging:
        say(
            f"fitting {detector.name} on {splits.name}: {len(splits.train)} train, {len(splits.val)} validation, "
            f"{len(splits.test)} test images"
            + ("" if tile is None else f"; {len(train)} training tiles of {tile} px, every {tile_stride or tile} px")
        )
        # Validation during training scores whole images: skipped for a detector fitted on tiles.
        report = engine.fit(detector, train, val if tile is None else None, calibrate=False)
        val_predictions = (
            score_dataset(engine, detector, val, tile, tile_stride, description="calibrate") if val is not None else None
        )
        if val_predictions is not None:
            report["calibration"] = engine.calibrate(detector, val_predictions)
        detector.post_processor.set_manual_threshold(image_threshold, pixel_threshold)
        run = {
            "model": detector.name,
            "data": data if isinstance(data, str) else splits.name,
            "data_name": splits.name,
            "val_split": val_split if validation_note is None else validation_note["val_split"],
            "textures": None if textures is None else str(textures),
            "seed": engine.seed,
            "epochs_override": engine.epochs,
            "steps_override": engine.steps,
            "precision": engine.precision,
            "environment": environment(),
            "weights_sources": _weights_sources(detector),
            "tile": tile,
            "tile_stride": None if tile is None else tile_stride or tile,
        }
        # Written by a thread while the test set is scored and the outputs drawn; the run folder
        # is committed (or removed) only once the file is complete.
        checkpoint = start_checkpoint(detector, staging / CHECKPOINT_NAME, extra={"run": run})
        try:
            report = {**run, **report, "post_processing": detector.post_processor.summary()}
            if validation_note is not None:
                report["validation"] = validation_note
            result = RunResult(output=Path(output), report=report)
            if splits.test:
                if splits.test is splits.val:  # validation is the test set (the MVTec protocol): score it once
                    test, predictions = val, val_predictions
                    metrics = engine.evaluate(detector, predictions)
                else:
                    test = _dataset(splits, splits.test, detector, has_masks=splits.has_masks)
                    predictions = score_dataset(engine, detector, test, tile, tile_stride, description="test")
                    metrics = engine.evaluate(detector, predictions)
                metrics = {"model": detector.name, "data": splits.name, "fit_seconds": report["fit_seconds"], **metrics}
                atomic_write_json(staging / "metrics.json", metrics)
                result.rows = predictions_table(detector, predictions)
                write_table(staging / "predictions.csv", result.rows, "csv")
                result.heatmaps = _visual_output(staging, detector, test, predictions, heatmaps)
                report["metrics"] = result.metrics = metrics
                result.predictions = predictions
            if report["history"]:
                save_loss_curve(report["history"], staging / "loss_curve.png", title=f"{detector.name} on {splits.name}")
            atomic_write_json(staging / "report.json", report)
        finally:
            futures.wait([checkpoint])
        checkpoint.result()  # a failed write fails the run
    distributed.finish()
    return result


def check_data_kind(detector: AnomalyDetector, splits: DataSplits, tile: int | None = None) -> None:
    """One-line errors for data the detector cannot take: image data for a video detector, tiles of video."""
    length = detector.input_spec.clip_length
    if length > 1 and not splits.video:
        raise ValueError(
            f"{detector.name} is a video detector (clips of {length} frames) and {splits.name} is image data: "
            "give it video data (video:PATH)"
        )
    if splits.video and tile is not None:
        raise ValueError(f"--tile: {splits.name} is video data; tiles are for images")


def _dataset(
    splits: DataSplits, records: list, detector: AnomalyDetector, has_masks: bool = False, cache: bool = False
):
    """The dataset of some of the splits' records: clips for video data, images otherwise."""
    if splits.video:
        from adcore.data.video_dataset import VideoDataset

        return VideoDataset(records, detector.input_spec, has_masks=has_masks)
    return AnomalyDataset(records, detector.input_spec, has_masks=has_masks, cache=cache)


def _visual_output(staging: Path, detector: AnomalyDetector, dataset, predictions: Predictions, limit: int) -> int:
    """Heatmap panels for images; for video, a contact sheet of the top frames and score-over-time plots."""
    if getattr(dataset, "is_video", False):
        from adcore.video_output import write_video_output

        return write_video_output(staging / "heatmaps", detector, dataset, predictions, limit)
    return write_heatmaps(staging / "heatmaps", detector, dataset, predictions, limit)


def _hold_out_for_thresholds(splits: DataSplits, seed: int, quantile: float) -> tuple[DataSplits, dict]:
    """Normal-only data without validation images: hold out a seeded share of the training images.

    Their scores give the thresholds by the quantile rule, so the checkpoint always has a
    verdict. With fewer than two training images nothing can be spared: the run then has no
    thresholds, and the note says so.
    """
    normal = sorted((r for r in splits.train if r.label in (0, None)), key=lambda r: str(r.path))
    if len(normal) < 2:
        message = (
            f"no validation images and only {len(normal)} training image(s): no thresholds "
            "(pass --image-threshold, or more images)"
        )
        return splits, {"val_split": "same_as_test", "automatic": True, "images": 0, "message": message}
    if splits.video:  # whole videos, or a single video's last frames: never random frames
        from adcore.data.video_layouts import split_videos

        held_records = split_videos(normal, NORMAL_ONLY_HOLD_OUT, seed)[0]
    else:
        random.Random(seed).shuffle(normal)
        held_records = normal[: max(1, round(len(normal) * NORMAL_ONLY_HOLD_OUT))]
    count = len(held_records)
    held = set(map(id, held_records))
    val = sorted(held_records, key=lambda r: str(r.path))
    train = [r for r in splits.train if id(r) not in held]
    fraction = f"{NORMAL_ONLY_HOLD_OUT:g}"
    message = (
        f"no validation images: held out {count} of {len(splits.train)} training images (seeded, "
        f"{NORMAL_ONLY_HOLD_OUT:.0%}) for thresholds by the {quantile:g} quantile of their scores "
        f"(--val-split from_train:F or synthetic:F to choose otherwise)"
    )
    note = {
        "val_split": f"from_train:{fraction}",
        "automatic": True,
        "images": count,
        "rule": "quantile",
        "normal_quantile": quantile,
        "message": message,
    }
    return attrs.evolve(splits, train=train, val=val), note


def score_dataset(
    engine: Engine,
    detector: AnomalyDetector,
    dataset: AnomalyDataset,
    tile: int | None = None,
    tile_stride: int | None = None,
    on_image: Callable[[int, tuple[int, int], torch.Tensor | None, torch.Tensor | None], None] | None = None,
    description: str = "predict",
    spill_bytes: int | None = None,
) -> Predictions:
    """``engine.predict``, or with ``tile`` each image scored as tiles at its own resolution.

    ``on_image(index, (width, height), full_map, regions)`` receives every image's map at its
    own size and the detector's regions in its own pixels (for full-resolution outputs), one
    image at a time, so full-size maps are never all held in memory. ``Predictions.maps``
    stay at the detector's input size (tiled maps are resized to it), so metrics and heatmaps
    work as without tiles. Past ``spill_bytes`` (default 64 MB or ``ADCORE_SPILL_MB``) maps
    and masks go to a temporary file (:mod:`adcore.prediction_store`), tiled or not.
    """
    spec = detector.input_spec
    if tile is None:
        predictions = engine.predict(detector, dataset, description=description, spill_bytes=spill_bytes)
        if on_image is not None:
            for index, record in enumerate(dataset.records):
                width, height = read_image(record.path).size
                full = None if predictions.maps is None else resize_map(predictions.maps[index, 0], height, width)
                regions = (
                    None
                    if predictions.regions is None
                    else scale_regions(predictions.regions[index], spec.image_size, (width, height))
                )
                on_image(index, (width, height), full, regions)
        return predictions
    check_tiling(tile, tile_stride)
    detector.check_fitted()
    detector.to(engine.torch_device).eval()
    store = PredictionStore(spill_bytes)  # maps and masks go to a temporary file past spill_bytes
    labels = [r.label for r in dataset.records]
    has_labels = not any(label is None for label in labels)
    started = time.perf_counter()
    for index in engine._bar(range(len(dataset)), f"{description} (tiles of {tile})"):
        record = dataset.records[index]
        scored = score_image(detector, read_image(record.path), tile, tile_stride, engine.batch_size, engine.autocast)
        in_h, in_w = spec.image_size
        store.append(
            paths=[str(record.path)],
            scores=torch.tensor([scored.score], dtype=torch.float32),
            maps=None if scored.model_map is None else scored.model_map[None, None],
            labels=torch.tensor([labels[index]], dtype=torch.long) if has_labels else None,
            masks=dataset.raw(index)[1][None].float() if dataset.has_masks else None,
            regions=None
            if scored.regions is None
            else [scale_regions(scored.regions, (scored.size[1], scored.size[0]), (in_w, in_h))],
        )
        if on_image is not None:
            on_image(index, scored.size, scored.full_map, scored.regions)
    return store.finish(seconds=time.perf_counter() - started)


def check_tiling(tile: int | None, tile_stride: int | None) -> None:
    """Refuse a bad tile size or stride before any work."""
    if tile is None:
        if tile_stride is not None:
            raise ValueError("--tile-stride needs --tile SIZE")
        return
    tile_boxes(tile, tile, tile, tile_stride)  # raises on a non-positive size or a stride above the size


def evaluate_run(
    checkpoint: str | os.PathLike,
    data: str | None = None,
    output: str | os.PathLike | None = None,
    engine: Engine | None = None,
    *,
    heatmaps: int = 50,
    image_threshold: float | None = None,
    pixel_threshold: float | None = None,
    tile: int | None = None,
    tile_stride: int | None = None,
) -> RunResult:
    """Metrics of a checkpoint on labelled data (by default the data it was fitted on, split as then).

    ``tile``/``tile_stride``: score each test image as tiles (:func:`score_dataset`).
    """
    engine = engine or Engine()
    check_tiling(tile, tile_stride)
    folder = RunFolder(output) if output else None
    if folder:
        folder.check()
    detector, metadata = load_checkpoint(checkpoint)
    detector.post_processor.set_manual_threshold(image_threshold, pixel_threshold)
    run = metadata.get("run", {}) if isinstance(metadata.get("run"), dict) else {}
    if tile is None and run.get("tile"):  # a detector fitted on tiles is tested on tiles
        tile, tile_stride = int(run["tile"]), run.get("tile_stride")
    data = data or run.get("data")
    if not data:
        raise ValueError("--data is required: the checkpoint does not record its data")
    # Re-split exactly as at fit time, so training and calibration images never leak into the test.
    same_data = data == run.get("data")
    seed = run.get("seed", engine.seed) if same_data else engine.seed
    splits = load_data(data, val_split=run.get("val_split", "same_as_test") if same_data else "same_as_test", seed=seed)
    if not splits.test:
        raise ValueError(f"{data}: no test images")
    check_data_kind(detector, splits, tile)
    test = _dataset(splits, splits.test, detector, has_masks=splits.has_masks)
    predictions = score_dataset(engine, detector, test, tile, tile_stride, description="test")
    metrics = {"model": detector.name, "data": splits.name, **engine.evaluate(detector, predictions)}
    if tile is not None:
        metrics["tile"], metrics["tile_stride"] = tile, tile_stride or tile
    result = RunResult(output=Path(output) if output else None, metrics=metrics, predictions=predictions)
    result.rows = predictions_table(detector, predictions)
    if folder:
        with folder as staging:
            atomic_write_json(staging / "metrics.json", metrics)
            write_table(staging / "predictions.csv", result.rows, "csv")
            result.heatmaps = _visual_output(staging, detector, test, predictions, heatmaps)
    return result


def predict_run(
    detector: AnomalyDetector,
    records: list[ImageRecord],
    output: str | os.PathLike,
    engine: Engine | None = None,
    *,
    table_format: str = "csv",
    heatmaps: int = 50,
    save_masks: bool = False,
    save_maps: bool = False,
    tile: int | None = None,
    tile_stride: int | None = None,
) -> RunResult:
    """Score images with a fitted (or zero-shot) detector; write the table and heatmaps to ``output``.

    ``save_masks``/``save_maps`` write each image's mask (PNG) and raw map (``.npy``) at the
    image's own resolution; with them, or with ``tile``, each row also gets the image's
    ``width``, ``height`` and ``regions`` (connected components of its full-resolution mask,
    or the detector's own regions scaled to the image).
    """
    engine = engine or Engine()
    detector.check_fitted()
    check_tiling(tile, tile_stride)
    folder = RunFolder(output)
    folder.check()
    if detector.input_spec.clip_length > 1:
        raise ValueError(
            f"{detector.name} is a video detector (clips of {detector.input_spec.clip_length} frames): "
            "adcore predict scores images; run adcore test --data video:PATH on videos"
        )
    dataset = AnomalyDataset(records, detector.input_spec)
    full_resolution = save_masks or save_maps or tile is not None
    post = detector.post_processor
    with folder as staging:
        extra: dict[int, dict] = {}

        def on_image(index: int, size: tuple[int, int], full_map, regions) -> None:
            write_full_resolution(staging, index, dataset.records[index], detector, full_map, save_masks, save_maps)
            if regions is not None:
                found = detector_regions(regions)
            elif full_map is not None and not torch.isnan(post.pixel_threshold):
                found = find_regions(full_map.numpy(), float(post.pixel_threshold))
            else:
                found = []
            extra[index] = {"width": size[0], "height": size[1], "regions": found}

        predictions = score_dataset(engine, detector, dataset, tile, tile_stride, on_image if full_resolution else None)
        rows = predictions_table(detector, predictions)
        for index, row in enumerate(rows):
            row.update(extra.get(index, {}))
        result = RunResult(output=Path(output), predictions=predictions, rows=rows)
        write_table(staging / f"predictions.{table_format}", result.rows, table_format)
        result.heatmaps = write_heatmaps(staging / "heatmaps", detector, dataset, predictions, heatmaps)
    return result
