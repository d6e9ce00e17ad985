"""Datasets: image records from known layouts, decoded and resized for a detector (video: clips of
frames, :mod:`adcore.data.video_dataset`; OpenCV is imported only when a video file is read)."""

from adcore.data.dataset import AnomalyDataset, ImageRecord, collate
from adcore.data.image_io import ImageReadError, read_image, read_mask
from adcore.data.sources import DataSplits, load_data

__all__ = [
    "AnomalyDataset",
    "DataSplits",
    "ImageReadError",
    "ImageRecord",
    "collate",
    "load_data",
    "read_image",
    "read_mask",
]
