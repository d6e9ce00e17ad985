"""Where AI-VAD's objects come from: foreground regions of the scored frame.

Two sources, both giving boxes ``(x0, y0, x1, y1)`` in input pixels:

- :class:`BackgroundRegions` (the offline default, no network): a background image is
  learned from the training frames (the per-pixel median of a seeded reservoir of them);
  a frame's foreground is where its grey level differs from the background's by more than
  ``threshold``; an opening removes speckle, a dilation joins the parts of one object, and
  each connected component of at least ``min_area`` pixels is a region (its bounding box).
- :class:`MaskRcnnRegions`: a torchvision Mask R-CNN read from a weights file (a resource),
  as in the paper: its detections with a confidence of at least ``confidence_threshold``.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

MASK_RCNN_ARCHITECTURES = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")
KEYPOINT_RCNN_ARCHITECTURES = ("keypointrcnn_resnet50_fpn",)


def to_grey_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(3, H, W) RGB in 0..1 -> (H, W) uint8 grey (ITU-R 601 luma, as OpenCV)."""
    rgb = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def foreground_boxes(foreground: np.ndarray, min_area: int, kernel_size: int, max_regions: int) -> torch.Tensor:
    """A binary (H, W) uint8 mask -> boxes (K, 4) float of its connected components, largest first.

    Morphology first: an opening (``3 x 3``) drops isolated pixels, a dilation by
    ``kernel_size`` joins the fragments of one object (legs, head, torso). Components
    smaller than ``min_area`` pixels (after the dilation) are dropped.
    """
    mask = cv2.morphologyEx(foreground, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    if kernel_size > 1:
        mask = cv2.dilate(mask, np.ones((kernel_size, kernel_size), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    rows = []
    for label in range(1, count):  # 0 is the background
        x, y, w, h, area = (int(v) for v in stats[label])
        if area >= min_area:
            rows.append((area, [x, y, x + w, y + h]))
    rows.sort(key=lambda row: -row[0])
    boxes = [box for _, box in rows[:max_regions]]
    return torch.tensor(boxes, dtype=torch.float32).view(-1, 4)


class BackgroundRegions(nn.Module):
    """Regions by background subtraction against a learned background image (a buffer)."""

    def __init__(self, threshold: float, min_area: int, kernel_size: int, max_regions: int) -> None:
        super().__init__()
        self.threshold = threshold
        self.min_area = min_area
        self.kernel_size = kernel_size
        self.max_regions = max_regions
        self.register_buffer("background", torch.zeros(0))  # (3, H, W) in 0..1 once fitted

    def set_background(self, frames: torch.Tensor) -> None:
        """The background: the per-pixel median of ``frames`` (R, 3, H, W) in 0..1.

        A moving object covers a pixel in fewer than half of the frames, so the median there
        is the empty scene.
        """
        self.background = frames.float().median(dim=0).values

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Frames (N, 3, H, W) in 0..1 -> boxes (K_i, 4) per frame."""
        if self.background.numel() == 0:
            raise RuntimeError("ai-vad: the background is not learned yet (fit first)")
        key = (self.background.data_ptr(), self.background._version)
        if getattr(self, "_grey_key", None) != key:  # the grey background, once per learned/loaded background
            self._grey_key, self._grey = key, to_grey_uint8(self.background).astype(np.int16)
        background = self._grey
        boxes = []
        for frame in pixels:
            difference = np.abs(to_grey_uint8(frame).astype(np.int16) - background)
            foreground = (difference > self.threshold).astype(np.uint8)
            boxes.append(
                foreground_boxes(foreground, self.min_area, self.kernel_size, self.max_regions).to(pixels.device)
            )
        return boxes


class MaskRcnnRegions(nn.Module):
    """Detections of a torchvision Mask R-CNN (any ``MaskRCNN``/``FasterRCNN``-like detector)."""

    def __init__(self, model: nn.Module, confidence_threshold: float, min_area: int, max_regions: int) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.confidence_threshold = confidence_threshold
        self.min_area = min_area
        self.max_regions = max_regions

    def train(self, mode: bool = True) -> MaskRcnnRegions:
        super().train(mode)
        self.model.eval()  # a frozen detector always runs in inference mode
        return self

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        boxes = []
        for detections in self.model(list(pixels.float().clamp(0, 1))):
            b, scores = detections["boxes"], detections["scores"]
            area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            keep = (scores >= self.confidence_threshold) & (area >= self.min_area)
            b, scores = b[keep], scores[keep]
            boxes.append(b[scores.argsort(descending=True)[: self.max_regions]].float())
        return boxes


def build_detection_model(architecture: str, state_dict: dict) -> nn.Module:
    """A torchvision Mask R-CNN or Keypoint R-CNN of ``architecture`` holding ``state_dict``.

    The class (or keypoint) count is read from the weights, so a model fine-tuned on other
    classes loads too; a state dict of another architecture fails with the mismatching keys.
    """
    from torchvision.models import detection

    builder = getattr(detection, architecture)
    if architecture.startswith("keypointrcnn"):
        key = "roi_heads.keypoint_predictor.kps_score_lowres.weight"
        if key not in state_dict:
            raise ValueError(f"the pose weights have no {key!r}: not a torchvision Keypoint R-CNN state_dict")
        model = builder(weights=None, weights_backbone=None, num_keypoints=int(state_dict[key].shape[1]))
    else:
        key = "roi_heads.box_predictor.cls_score.weight"
        if key not in state_dict:
            raise ValueError(f"the region weights have no {key!r}: not a torchvision Mask R-CNN state_dict")
        model = builder(weights=None, weights_backbone=None, num_classes=int(state_dict[key].shape[0]))
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"the weights do not fit {architecture}: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    return model.eval()
