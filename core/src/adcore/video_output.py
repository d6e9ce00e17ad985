"""What a video run leaves for a person: the highest-scoring frames, and each video's score over time.

* ``top_frames.png``: a contact sheet of the highest-scoring frames (12 by default), each
  with its anomaly map overlaid (normalised: 0.5 is the pixel threshold), the detector's
  region boxes (``DetectorOutput.regions``) in red with their scores, the ground-truth mask
  outlined in green where the data has masks, and a caption: video, frame, score, label.
* ``scores_<video>.png``: per video, the frame score over time (normalised when the run is
  calibrated, with the threshold drawn), ground-truth anomalous frames shaded.

Frames are decoded again from the dataset (only the ones shown), never a whole video.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from adcore.detector import AnomalyDetector
from adcore.engine import Predictions
from adcore.io import atomic_write
from adcore.visualize import colorize, tensor_to_uint8

#: Frames on the contact sheet, and its columns.
TOP_FRAMES = 12
COLUMNS = 4
#: Score plots written at most (one per video).
MAX_PLOTS = 50
#: Frames smaller than this (width, pixels) are enlarged on the sheet so captions and boxes stay legible.
MIN_TILE_WIDTH = 256


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "video"


def _frame_tile(
    image: np.ndarray,
    normalized_map: np.ndarray | None,
    regions: torch.Tensor | None,
    gt_mask: np.ndarray | None,
    caption: str,
    anomalous: bool,
) -> Image.Image:
    scale = max(1.0, MIN_TILE_WIDTH / image.shape[1])
    if scale > 1:  # enlarge small inputs: the map and ground truth follow, boxes are scaled
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        if normalized_map is not None:
            normalized_map = np.asarray(Image.fromarray(normalized_map.astype(np.float32)).resize(size, Image.BILINEAR))
        if gt_mask is not None:
            gt_mask = np.asarray(Image.fromarray(gt_mask).resize(size, Image.NEAREST))
        if regions is not None:
            regions = torch.cat([regions[:, :4] * scale, regions[:, 4:]], dim=1)
    height, width = image.shape[:2]
    shown = image
    if normalized_map is not None:
        heat = colorize(normalized_map)
        alpha = (0.15 + 0.6 * np.clip(normalized_map, 0.0, 1.0))[..., None]
        shown = ((1 - alpha) * image + alpha * heat).astype(np.uint8)
    if gt_mask is not None and gt_mask.any():
        padded = np.pad(gt_mask, 1, mode="edge")
        interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        shown = shown.copy()
        shown[gt_mask & ~interior] = (0, 255, 0)
    banner = 16
    tile = Image.new("RGB", (width, height + banner), (0, 0, 0))
    tile.paste(Image.fromarray(shown), (0, banner))
    draw = ImageDraw.Draw(tile)
    if regions is not None:
        for x0, y0, x1, y1, score in regions.tolist():
            draw.rectangle((x0, y0 + banner, x1, y1 + banner), outline=(255, 0, 0), width=2)
            draw.text((x0 + 2, y0 + banner + 1), f"{score:.3g}", fill=(255, 60, 60))
    draw.text((3, 2), caption, fill=(255, 80, 80) if anomalous else (120, 255, 120))
    return tile


def write_contact_sheet(
    path: Path, detector: AnomalyDetector, dataset, predictions: Predictions, count: int = TOP_FRAMES
) -> int:
    """The ``count`` highest-scoring frames with maps, regions and ground truth; returns frames shown."""
    post = detector.post_processor
    calibrated = post.is_calibrated
    order = torch.argsort(predictions.scores, descending=True, stable=True)[:count].tolist()
    if not order:
        return 0
    scores = post.normalize_scores(predictions.scores) if calibrated else predictions.scores
    show_maps = predictions.maps is not None and calibrated and not torch.isnan(post.pixel_threshold)
    tiles = []
    for index in order:
        record = dataset.records[index]
        pixels, gt = dataset.raw(index)
        image = tensor_to_uint8(pixels)
        normalized_map = post.normalize_maps(predictions.maps[index : index + 1])[0, 0].numpy() if show_maps else None
        regions = None if predictions.regions is None else predictions.regions[index]
        label = "" if predictions.labels is None else f" gt {int(predictions.labels[index])}"
        anomalous = bool(calibrated and predictions.scores[index] >= post.image_threshold)
        caption = f"{Path(record.video).name} #{record.frame_index}  {float(scores[index]):.3f}{label}"
        tiles.append(
            _frame_tile(image, normalized_map, regions, None if gt is None else gt[0].numpy(), caption, anomalous)
        )
    width, height = tiles[0].size
    columns = min(COLUMNS, len(tiles))
    rows = -(-len(tiles) // columns)
    header = 34
    sheet = Image.new("RGB", (columns * width, rows * height + header), (24, 24, 24))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * width, header + (i // columns) * height))
    title = f"{detector.name}: the {len(tiles)} highest-scoring frames, highest first"
    legend = (
        "scores normalised (threshold 0.5); map overlaid; red boxes: regions; green: ground truth"
        if calibrated
        else "raw scores (no thresholds)"
    )
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 3), title, fill=(230, 230, 230))
    draw.text((4, 18), legend, fill=(180, 180, 180))
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return len(tiles)


def write_score_plots(directory: Path, detector: AnomalyDetector, dataset, predictions: Predictions) -> int:
    """One PNG per video (at most :data:`MAX_PLOTS`): frame score over time, ground-truth anomalies shaded."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    post = detector.post_processor
    calibrated = post.is_calibrated
    scores = (post.normalize_scores(predictions.scores) if calibrated else predictions.scores).numpy()
    videos: dict[str, list[int]] = {}
    for i, record in enumerate(dataset.records):
        videos.setdefault(record.video, []).append(i)
    written = 0
    for video, rows in list(videos.items())[:MAX_PLOTS]:
        frames = np.array([dataset.records[i].frame_index for i in rows])
        figure, axis = plt.subplots(figsize=(8, 2.8), dpi=100)
        try:
            if predictions.labels is not None:
                labels = predictions.labels[rows].numpy()
                for frame, label in zip(frames, labels):
                    if label == 1:
                        axis.axvspan(frame - 0.5, frame + 0.5, color="tab:red", alpha=0.18, linewidth=0)
            axis.plot(frames, scores[rows], color="tab:blue", linewidth=1.2, label="frame score")
            if calibrated:
                axis.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="threshold")
            axis.set_xlabel("frame")
            axis.set_ylabel("score (normalised)" if calibrated else "score (raw)")
            shaded = " (shaded: ground-truth anomalous frames)" if predictions.labels is not None else ""
            axis.set_title(f"{detector.name} on {Path(video).name}{shaded}", fontsize=9)
            axis.grid(alpha=0.3)
            figure.tight_layout()
            atomic_write(
                directory / f"scores_{_safe(Path(video).name)}.png",
                lambda tmp, figure=figure: figure.savefig(tmp, format="png"),
            )
            written += 1
        finally:
            plt.close(figure)
    return written


def write_video_output(
    directory: Path, detector: AnomalyDetector, dataset, predictions: Predictions, limit: int
) -> int:
    """The contact sheet (up to ``min(limit, 12)`` frames) and the score plots; returns frames shown."""
    if limit <= 0:
        return 0
    directory.mkdir(parents=True, exist_ok=True)
    shown = write_contact_sheet(directory / "top_frames.png", detector, dataset, predictions, min(limit, TOP_FRAMES))
    write_score_plots(directory, detector, dataset, predictions)
    return shown
