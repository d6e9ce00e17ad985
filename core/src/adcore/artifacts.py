"""What a run leaves for a person: metrics, prediction tables, heatmap panels, the loss curve."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import adcore
from adcore.detector import AnomalyDetector
from adcore.engine import Predictions
from adcore.io import atomic_write, atomic_write_json, atomic_write_text
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
    """``rows`` as CSV or JSON; in CSV, list/dict cells (``regions``) are written as JSON text."""
    if fmt == "json":
        atomic_write_json(path, rows)
        return
    buffer = io.StringIO()
    fieldnames = list(dict.fromkeys(key for row in rows for key in row)) if rows else ["path", "score"]
    writer = csv.DictWriter(buffer, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(
        {key: json.dumps(value) if isinstance(value, (list, dict)) else value for key, value in row.items()}
        for row in rows
    )
    atomic_write_text(path, buffer.getvalue())


def file_stem(index: int, record) -> str:
    """``NNNN_<defect type>_<stem>`` (``NNNN_<stem>`` without a defect type): heatmaps, masks, maps."""
    stem = (
        f"{record.defect_type.replace('/', '_')}_{Path(record.path).stem}"
        if record.defect_type
        else Path(record.path).stem
    )
    return f"{index:04d}_{stem}"


def _display_size(width: int, height: int, input_size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of a panel tile: the image's aspect ratio, its longer side the input's longer side."""
    long_side = max(input_size)
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


#: Most threads that draw and encode heatmap panels at once (PNG encoding and image decoding
#: release the GIL, so panels overlap on several cores).
HEATMAP_THREADS = 4


def write_heatmaps(directory: Path, detector: AnomalyDetector, dataset, predictions: Predictions, limit: int) -> int:
    """Panels for up to ``limit`` images spread evenly over the dataset (all defect types).

    Each panel keeps the image's own aspect ratio: the original file is read again and shown
    with its longer side as long as the detector input's longer side; the map and mask are
    resized to that. Images a dataset changes when decoding (synthetic
    anomalies) are shown as decoded, at the input size.

    Panels are read, drawn and PNG-encoded by a few threads (decoding and zlib release the
    GIL); every one is written before this returns, so the run folder is still committed
    complete or not at all, and the files are the same whatever the thread count.
    """
    from concurrent.futures import ThreadPoolExecutor

    from adcore.data.image_io import read_image, read_mask
    from adcore.data.synthetic_validation import SyntheticValidationSet
    from adcore.tiling import resize_map

    post = detector.post_processor
    if not post.is_calibrated or limit <= 0:
        return 0
    count = len(predictions.paths)
    n = min(limit, count)
    chosen = sorted({round(i * (count - 1) / max(n - 1, 1)) for i in range(n)})
    scores = post.normalize_scores(predictions.scores)
    has_maps = predictions.maps is not None and not torch.isnan(post.pixel_threshold)
    synthetic = isinstance(dataset, SyntheticValidationSet)

    def write_one(index: int) -> None:
        record = dataset.records[index]
        if synthetic:
            pixels, gt = dataset.raw(index)
            image = tensor_to_uint8(pixels)
            gt_mask = None if gt is None else gt[0].numpy()
        else:
            original = read_image(record.path)
            width, height = _display_size(*original.size, detector.input_spec.image_size)
            image = np.asarray(original.resize((width, height), Image.BILINEAR))
            gt_mask = None
            if record.mask_path is not None and dataset.has_masks:
                gt_mask = np.asarray(read_mask(record.mask_path).resize((width, height), Image.NEAREST)) > 127
            elif dataset.has_masks:
                gt_mask = np.zeros((height, width), dtype=bool)
        display = None
        if has_maps:
            display = post.normalize_maps(resize_map(predictions.maps[index, 0], *image.shape[:2])).numpy()
        panel = render_panel(image, display, float(scores[index]), bool(scores[index] >= 0.5), gt_mask)
        save_panel(directory / f"{file_stem(index, record)}.png", panel)

    workers = max(1, min(HEATMAP_THREADS, os.cpu_count() or 1, len(chosen)))
    if workers == 1:
        for index in chosen:
            write_one(index)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="adcore-heatmaps") as pool:
            # list(): wait for every panel and raise the first error here, before the folder is committed.
            list(pool.map(write_one, chosen))
    return len(chosen)


def _save_npy(path: str, values: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a file object: np.save would append .npy to the temporary name
        np.save(handle, values, allow_pickle=False)


def write_full_resolution(
    directory: Path,
    index: int,
    record,
    detector: AnomalyDetector,
    full_map: torch.Tensor | None,
    save_masks: bool,
    save_maps: bool,
) -> None:
    """The map (``maps/*.npy``, float32, raw units) and mask (``masks/*.png``, 0/255) at the image's size."""
    if full_map is None:
        return
    stem = file_stem(index, record)
    values = full_map.numpy().astype(np.float32, copy=False)
    if save_maps:
        (directory / "maps").mkdir(exist_ok=True)
        atomic_write(directory / "maps" / f"{stem}.npy", lambda tmp: _save_npy(tmp, values))
    threshold = detector.post_processor.pixel_threshold
    if save_masks and not torch.isnan(threshold):
        (directory / "masks").mkdir(exist_ok=True)
        mask = Image.fromarray(np.where(values.astype(np.float64) >= float(threshold), 255, 0).astype(np.uint8))
        atomic_write(directory / "masks" / f"{stem}.png", lambda tmp: mask.save(tmp, format="PNG"))


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
