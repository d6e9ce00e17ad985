"""What a run leaves for a person: metrics, prediction tables, heatmap panels, the loss curve."""

from __future__ import annotations

import csv
import io
import platform
from pathlib import Path

import torch

import adcore
from adcore.detector import AnomalyDetector
from adcore.engine import Predictions
from adcore.io import atomic_write_json, atomic_write_text
from adcore.visualize import render_panel, save_panel, tensor_to_uint8


def predictions_table(detector: AnomalyDetector, predictions: Predictions) -> list[dict]:
    """One row per image: raw score, and with thresholds the normalised score and verdict."""
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


def write_table(path: Path, rows: list[dict], fmt: str) -> None:
    if fmt == "json":
        atomic_write_json(path, rows)
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["path", "score"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def write_heatmaps(directory: Path, detector: AnomalyDetector, dataset, predictions: Predictions, limit: int) -> int:
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


def format_metrics(metrics: dict) -> str:
    return "\n".join(
        f"{key:>28}: {value:.4f}" if isinstance(value, float) else f"{key:>28}: {value}" for key, value in metrics.items()
    )


def environment() -> dict:
    return {
        "adcore": adcore.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
