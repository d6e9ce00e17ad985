"""A whole run, callable from Python, the CLI and services: fit → calibrate → save → evaluate → artifacts.

``fit_run`` is what ``adcore fit`` does; ``evaluate_run`` and ``predict_run`` are ``adcore test``
and ``adcore predict``. Each writes its output folder completely or not at all
(:class:`~adcore.run_folder.RunFolder`) and checks that folder before any work.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import attrs

from adcore.artifacts import environment, predictions_table, write_heatmaps, write_table
from adcore.checkpoint import load_checkpoint, save_checkpoint
from adcore.data import AnomalyDataset, load_data
from adcore.data.dataset import ImageRecord
from adcore.data.sources import DataSplits
from adcore.data.synthetic_validation import SyntheticValidationSet
from adcore.detector import AnomalyDetector
from adcore.engine import Engine, Predictions
from adcore.io import atomic_write_json
from adcore.run_folder import RunFolder
from adcore.training import TrainingKind
from adcore.visualize import save_loss_curve

CHECKPOINT_NAME = "model.safetensors"


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
) -> RunResult:
    """Fit ``detector`` on ``data`` (``"mvtec:PATH"``, ... or loaded splits) and write the run to ``output``.

    ``textures`` names a folder of texture images for ``val_split="synthetic:F"`` anomalies.
    """
    engine = engine or Engine()
    folder = RunFolder(output)
    folder.check()  # an unwritable or full output fails now, not after the fit
    splits = load_data(data, val_split=val_split, seed=engine.seed) if isinstance(data, str) else data
    spec = detector.training_spec
    train = AnomalyDataset(splits.train, detector.input_spec, cache=spec.kind == TrainingKind.GRADIENT) if splits.train else []
    if splits.synthetic_val:
        val = SyntheticValidationSet(splits.val, detector.input_spec, seed=engine.seed, textures=textures)
    else:
        val = AnomalyDataset(splits.val, detector.input_spec, has_masks=splits.has_masks) if splits.val else None
    with folder as staging:
        say(
            f"fitting {detector.name} on {splits.name}: {len(splits.train)} train, {len(splits.val)} validation, "
            f"{len(splits.test)} test images"
        )
        report = engine.fit(detector, train, val, calibrate=False)
        val_predictions = engine.predict(detector, val, description="calibrate") if val is not None else None
        if val_predictions is not None:
            report["calibration"] = engine.calibrate(detector, val_predictions)
        detector.post_processor.set_manual_threshold(image_threshold, pixel_threshold)
        run = {
            "model": detector.name,
            "data": data if isinstance(data, str) else splits.name,
            "data_name": splits.name,
            "val_split": val_split,
            "textures": None if textures is None else str(textures),
            "seed": engine.seed,
            "epochs_override": engine.epochs,
            "steps_override": engine.steps,
            "precision": engine.precision,
            "environment": environment(),
            "weights_sources": _weights_sources(detector),
        }
        save_checkpoint(detector, staging / CHECKPOINT_NAME, extra={"run": run})
        report = {**run, **report, "post_processing": detector.post_processor.summary()}
        result = RunResult(output=Path(output), report=report)
        if splits.test:
            if splits.test is splits.val:  # validation is the test set (the MVTec protocol): score it once
                test, predictions = val, val_predictions
                metrics = engine.evaluate(detector, predictions)
            else:
                test = AnomalyDataset(splits.test, detector.input_spec, has_masks=splits.has_masks)
                metrics, predictions = engine.test(detector, test)
            metrics = {"model": detector.name, "data": splits.name, "fit_seconds": report["fit_seconds"], **metrics}
            atomic_write_json(staging / "metrics.json", metrics)
            result.rows = predictions_table(detector, predictions)
            write_table(staging / "predictions.csv", result.rows, "csv")
            result.heatmaps = write_heatmaps(staging / "heatmaps", detector, test, predictions, heatmaps)
            report["metrics"] = result.metrics = metrics
            result.predictions = predictions
        if report["history"]:
            save_loss_curve(report["history"], staging / "loss_curve.png", title=f"{detector.name} on {splits.name}")
        atomic_write_json(staging / "report.json", report)
    return result


def evaluate_run(
    checkpoint: str | os.PathLike,
    data: str | None = None,
    output: str | os.PathLike | None = None,
    engine: Engine | None = None,
    *,
    heatmaps: int = 50,
    image_threshold: float | None = None,
    pixel_threshold: float | None = None,
) -> RunResult:
    """Metrics of a checkpoint on labelled data (by default the data it was fitted on, split as then)."""
    engine = engine or Engine()
    folder = RunFolder(output) if output else None
    if folder:
        folder.check()
    detector, metadata = load_checkpoint(checkpoint)
    detector.post_processor.set_manual_threshold(image_threshold, pixel_threshold)
    run = metadata.get("run", {}) if isinstance(metadata.get("run"), dict) else {}
    data = data or run.get("data")
    if not data:
        raise ValueError("--data is required: the checkpoint does not record its data")
    # Re-split exactly as at fit time, so training and calibration images never leak into the test.
    same_data = data == run.get("data")
    seed = run.get("seed", engine.seed) if same_data else engine.seed
    splits = load_data(data, val_split=run.get("val_split", "same_as_test") if same_data else "same_as_test", seed=seed)
    if not splits.test:
        raise ValueError(f"{data}: no test images")
    test = AnomalyDataset(splits.test, detector.input_spec, has_masks=splits.has_masks)
    metrics, predictions = engine.test(detector, test)
    metrics = {"model": detector.name, "data": splits.name, **metrics}
    result = RunResult(output=Path(output) if output else None, metrics=metrics, predictions=predictions)
    result.rows = predictions_table(detector, predictions)
    if folder:
        with folder as staging:
            atomic_write_json(staging / "metrics.json", metrics)
            write_table(staging / "predictions.csv", result.rows, "csv")
            result.heatmaps = write_heatmaps(staging / "heatmaps", detector, test, predictions, heatmaps)
    return result


def predict_run(
    detector: AnomalyDetector,
    records: list[ImageRecord],
    output: str | os.PathLike,
    engine: Engine | None = None,
    *,
    table_format: str = "csv",
    heatmaps: int = 50,
) -> RunResult:
    """Score images with a fitted (or zero-shot) detector; write the table and heatmaps to ``output``."""
    engine = engine or Engine()
    detector.check_fitted()
    folder = RunFolder(output)
    folder.check()
    dataset = AnomalyDataset(records, detector.input_spec)
    predictions = engine.predict(detector, dataset)
    result = RunResult(output=Path(output), predictions=predictions, rows=predictions_table(detector, predictions))
    with folder as staging:
        write_table(staging / f"predictions.{table_format}", result.rows, table_format)
        result.heatmaps = write_heatmaps(staging / "heatmaps", detector, dataset, predictions, heatmaps)
    return result
