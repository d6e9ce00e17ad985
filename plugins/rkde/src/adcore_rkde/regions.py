"""R-KDE's region side: where the regions come from, which are kept, and how scores are painted.

Two region sources, both giving boxes ``(x0, y0, x1, y1)`` in input pixels with a confidence:

- :class:`GridRegions` (the default, offline, no detector weights): a dense multi-scale grid
  of square boxes, each ranked by an objectness measure, the *feature energy* of the
  ImageNet backbone inside the box (the mean channel norm of its deepest feature map there,
  divided by the largest such mean in the image, so confidences lie in (0, 1]). Textured,
  object-like parts of an image have high energy; flat background has low energy.
- :class:`FasterRcnnRegions`: a torchvision Faster R-CNN read from a weights file (a
  resource), either its region-proposal network's proposals with their objectness
  (``roi_stage="rpn"``) or its final detections with their class confidence
  (``roi_stage="detection"``), as the R-KDE paper does with its pretrained detector.

:func:`filter_regions` then applies the same rules to either source, in the order the
paper's implementation does: drop boxes with a side below ``min_box_size`` or a confidence
below ``confidence_threshold``, class-agnostic non-maximum suppression at
``iou_threshold``, and keep the ``max_detections_per_image`` most confident.

:func:`paint_regions` turns scored regions into an anomaly map: each pixel gets the
largest score of the regions that cover it, and ``background`` where none does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import clip_boxes_to_image, nms, roi_align

FASTER_RCNN_ARCHITECTURES = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
)


def filter_regions(
    boxes: torch.Tensor,
    confidences: torch.Tensor,
    image_size: tuple[int, int],
    min_box_size: float,
    confidence_threshold: float,
    iou_threshold: float,
    max_detections_per_image: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (K, 4) and confidences (K,) of one image -> the kept ones, most confident first.

    Boxes are clipped to the image; a box is kept if both its sides are >= ``min_box_size``
    pixels and its confidence >= ``confidence_threshold``; then NMS (class-agnostic)
    suppresses a box whose IoU with a more confident kept box exceeds ``iou_threshold``
    (1.0 keeps all); at most ``max_detections_per_image`` remain.
    """
    boxes = clip_boxes_to_image(boxes.float(), image_size)
    confidences = confidences.float()
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (widths >= min_box_size) & (heights >= min_box_size) & (confidences >= confidence_threshold)
    boxes, confidences = boxes[keep], confidences[keep]
    if iou_threshold < 1.0:
        order = nms(boxes, confidences, iou_threshold)  # sorted by decreasing confidence
    else:
        order = torch.argsort(confidences, descending=True, stable=True)
    order = order[:max_detections_per_image]
    return boxes[order], confidences[order]


def paint_regions(regions: torch.Tensor, image_size: tuple[int, int], background: float | torch.Tensor) -> torch.Tensor:
    """(K, 5) rows ``x0, y0, x1, y1, score`` -> an (H, W) map: the largest covering score, else background.

    A pixel (x, y) is covered by a box when its centre (x + 0.5, y + 0.5) lies in
    ``[x0, x1) x [y0, y1)``, so a box (0, 0, 2, 1) covers exactly pixels (0, 0) and (1, 0).
    A region scoring below the background does not lower it.
    """
    height, width = image_size
    background = torch.as_tensor(background, dtype=torch.float32, device=regions.device)
    canvas = background.expand(height, width).clone()
    if regions.numel() == 0:
        return canvas
    ys = torch.arange(height, device=regions.device, dtype=torch.float32).view(1, height, 1) + 0.5
    xs = torch.arange(width, device=regions.device, dtype=torch.float32).view(1, 1, width) + 0.5
    for chunk in regions.float().split(32):  # (k, H, W) at a time: bounded memory
        x0, y0, x1, y1, score = (chunk[:, i].view(-1, 1, 1) for i in range(5))
        inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
        painted = torch.where(inside, score, torch.tensor(float("-inf"), device=regions.device)).amax(dim=0)
        canvas = torch.maximum(canvas, painted)
    return canvas


def grid_boxes(image_size: tuple[int, int], scales: Sequence[float], overlap: float) -> torch.Tensor:
    """Square boxes (K, 4) of side ``scale x min(H, W)`` for each scale, covering the image.

    Neighbours overlap by the fraction ``overlap`` of a side (stride ``side x (1 - overlap)``);
    the last box of a row or column is flush with the image border, so every pixel is covered
    at every scale.
    """
    height, width = image_size
    boxes = []
    for scale in scales:
        side = max(1.0, scale * min(height, width))
        stride = max(1.0, side * (1.0 - overlap))

        def starts(extent: int, side: float = side, stride: float = stride) -> torch.Tensor:
            count = max(1, math.ceil((extent - side) / stride - 1e-6) + 1)
            return torch.linspace(0.0, max(0.0, extent - side), count)

        y0, x0 = torch.meshgrid(starts(height), starts(width), indexing="ij")
        x0, y0 = x0.flatten(), y0.flatten()
        boxes.append(torch.stack([x0, y0, x0 + side, y0 + side], dim=1))
    return torch.cat(boxes)


class GridRegions(nn.Module):
    """The offline region source: a multi-scale grid ranked by the backbone's feature energy."""

    def __init__(self, scales: Sequence[float], overlap: float) -> None:
        super().__init__()
        self.scales = tuple(float(s) for s in scales)
        self.overlap = float(overlap)

    def forward(
        self, feature_maps: Sequence[torch.Tensor], strides: Sequence[int], image_size: tuple[int, int]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per image: boxes (K, 4) and their objectness in (0, 1]."""
        deepest = feature_maps[-1].float()
        energy = deepest.norm(dim=1, keepdim=True)  # (N, 1, h, w): how much the backbone responds
        boxes = grid_boxes(image_size, self.scales, self.overlap).to(deepest.device)
        n = deepest.shape[0]
        mean_energy = roi_align(
            energy, [boxes] * n, output_size=2, spatial_scale=1.0 / strides[-1], sampling_ratio=2, aligned=True
        ).mean(dim=(1, 2, 3))
        mean_energy = mean_energy.view(n, -1)
        confidence = mean_energy / mean_energy.amax(dim=1, keepdim=True).clamp_min(1e-12)
        return [boxes] * n, list(confidence)


def build_faster_rcnn(architecture: str, state_dict: dict) -> nn.Module:
    """The torchvision architecture, with as many classes as the weights have, loaded strictly."""
    import torchvision

    if architecture not in FASTER_RCNN_ARCHITECTURES:
        raise ValueError(f"detector_architecture must be one of {FASTER_RCNN_ARCHITECTURES}, got {architecture!r}")
    key = "roi_heads.box_predictor.cls_score.weight"
    if key not in state_dict:
        raise ValueError(f"the detector weights have no {key!r}: not a torchvision Faster R-CNN state_dict")
    builder = getattr(torchvision.models.detection, architecture)
    model = builder(weights=None, weights_backbone=None, num_classes=int(state_dict[key].shape[0]))
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"the detector weights do not fit {architecture}: {str(exc)[:400]}") from None
    return model.eval().requires_grad_(False)


class FasterRcnnRegions(nn.Module):
    """Regions of a torchvision Faster R-CNN: RPN proposals or final detections, with their confidence."""

    def __init__(self, model: nn.Module, roi_stage: str, confidence_threshold: float, iou_threshold: float) -> None:
        super().__init__()
        self.model = model
        self.roi_stage = roi_stage
        # The detector's own class-wise filtering must not be stricter than ours (applied after).
        model.roi_heads.score_thresh = confidence_threshold
        model.roi_heads.nms_thresh = max(iou_threshold, model.roi_heads.nms_thresh)
        model.roi_heads.detections_per_img = max(model.roi_heads.detections_per_img, 1000)

    def train(self, mode: bool = True) -> FasterRcnnRegions:
        super().train(False)  # frozen: always the inference behaviour
        return self

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """RGB pixels in [0, 1] (N, 3, H, W) -> per image: boxes (K, 4) in input pixels, confidences (K,)."""
        images = list(pixels.float())
        if self.roi_stage == "detection":
            detections = self.model(images)
            return [d["boxes"] for d in detections], [d["scores"] for d in detections]
        return self._proposals(images)

    def _proposals(self, images: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The RPN's proposals with their objectness probability (torchvision returns only boxes)."""
        from torchvision.models.detection.rpn import concat_box_prediction_layers
        from torchvision.models.detection.transform import resize_boxes

        original_sizes = [tuple(image.shape[-2:]) for image in images]
        image_list, _ = self.model.transform(images)
        features = list(self.model.backbone(image_list.tensors).values())
        rpn = self.model.rpn
        objectness, deltas = rpn.head(features)
        anchors = rpn.anchor_generator(image_list, features)
        per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = rpn.box_coder.decode(deltas, anchors).view(len(anchors), -1, 4)
        boxes, scores = rpn.filter_proposals(proposals, objectness, image_list.image_sizes, per_level)
        boxes = [
            resize_boxes(b, resized, original)
            for b, resized, original in zip(boxes, image_list.image_sizes, original_sizes, strict=True)
        ]
        return boxes, scores


__all__ = [
    "FASTER_RCNN_ARCHITECTURES",
    "FasterRcnnRegions",
    "GridRegions",
    "build_faster_rcnn",
    "filter_regions",
    "grid_boxes",
    "paint_regions",
]
