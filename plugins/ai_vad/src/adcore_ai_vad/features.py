"""AI-VAD's three attributes of a region: velocity, pose and a deep (appearance) embedding.

- **Optical flow** between the clip's first and last frame: OpenCV's Farneback or DIS
  (offline, no weights) or a torchvision RAFT read from a weights file (:class:`OpenCvFlow`,
  :class:`RaftFlow`); both give (N, 2, H, W) displacements in input pixels.
- **Velocity** (:func:`velocity_histograms`): inside each box, the flow vectors' orientations
  are binned into ``bins`` equal sectors of the circle and each bin sums the vectors'
  magnitudes; dividing by the box's pixel count makes it a mean over the box, so a box of
  people walking right at 2 px/frame gives ``2`` in the "right" bin wherever it is.
- **Deep features**: the region's RoI-aligned features of a frozen ImageNet backbone
  (:func:`adcore.components.roi_features`, offline) or a CLIP image embedding of the region's crop
  (:class:`ClipEmbedding`, a resource).
- **Pose** (:class:`KeypointPose`): a torchvision Keypoint R-CNN's keypoint head run on the
  given boxes; the keypoints' coordinates relative to the box, divided by its width and
  height, so the pose does not depend on where or how large the person is.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from adcore_ai_vad.regions import to_grey_uint8

FLOW_METHODS = ("farneback", "dis", "raft_small", "raft_large")


class OpenCvFlow(nn.Module):
    """Dense optical flow with OpenCV (Farneback's polynomial expansion, or DIS), on grey frames."""

    def __init__(self, method: str = "farneback") -> None:
        super().__init__()
        if method not in ("farneback", "dis"):
            raise ValueError(f"OpenCvFlow: method must be 'farneback' or 'dis', got {method!r}")
        self.method = method

    def _pair(self, first: np.ndarray, last: np.ndarray) -> np.ndarray:
        if self.method == "dis":
            return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(first, last, None)
        return cv2.calcOpticalFlowFarneback(first, last, None, 0.5, 4, 15, 3, 5, 1.2, 0)

    @torch.no_grad()
    def forward(self, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """Frames (N, 3, H, W) in 0..1 -> flow (N, 2, H, W), (dx, dy) from ``first`` to ``last``."""
        flows = [
            torch.from_numpy(self._pair(to_grey_uint8(a), to_grey_uint8(b))).permute(2, 0, 1)
            for a, b in zip(first, last, strict=True)
        ]
        return torch.stack(flows).to(first.device)


class RaftFlow(nn.Module):
    """A torchvision RAFT (small or large) as a frozen flow network."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> RaftFlow:
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        height, width = first.shape[-2:]
        # RAFT wants sides divisible by 8, at least 128 (its correlation pyramid), and pixels in
        # [-1, 1]: resize to such a size, then bring the flow back to input pixels.
        size = (max(128, -(-height // 8) * 8), max(128, -(-width // 8) * 8))
        a = F.interpolate(first.float() * 2 - 1, size=size, mode="bilinear", align_corners=False)
        b = F.interpolate(last.float() * 2 - 1, size=size, mode="bilinear", align_corners=False)
        flow = self.model(a, b)[-1]
        flow = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
        scale = torch.tensor([width / size[1], height / size[0]], device=flow.device).view(1, 2, 1, 1)
        return flow * scale


def build_raft(architecture: str, state_dict: dict) -> nn.Module:
    from torchvision.models import optical_flow

    model = getattr(optical_flow, architecture)(weights=None)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def velocity_histograms(flow: torch.Tensor, boxes: torch.Tensor, bins: int) -> torch.Tensor:
    """Flow (2, H, W) and boxes (K, 4) -> (K, bins): magnitude-weighted orientation histograms.

    Bin ``b`` covers orientations ``[b, b + 1) * 2 pi / bins`` counted from the +x axis
    towards +y (image rows grow downwards), and holds the sum of the magnitudes of the box's
    flow vectors pointing there divided by the box's pixel count.
    """
    dx, dy = flow[0].float(), flow[1].float()
    magnitude = torch.sqrt(dx.square() + dy.square())
    angle = torch.atan2(dy, dx) % (2 * math.pi)
    index = (angle / (2 * math.pi) * bins).long().clamp(0, bins - 1)
    height, width = dx.shape
    out = flow.new_zeros(boxes.shape[0], bins, dtype=torch.float32)
    for k, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if x1 <= x0 or y1 <= y0:
            continue
        m = magnitude[y0:y1, x0:x1].reshape(-1)
        out[k] = torch.bincount(index[y0:y1, x0:x1].reshape(-1), weights=m, minlength=bins)[:bins] / m.numel()
    return out


class ClipEmbedding(nn.Module):
    """CLIP (open_clip) image embeddings of region crops, unit length."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], size: int) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.size = size

    def train(self, mode: bool = True) -> ClipEmbedding:
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """Frames (N, 3, H, W) in 0..1 and boxes per frame -> (sum K_i, D)."""
        if sum(len(b) for b in boxes) == 0:
            return pixels.new_zeros(0, int(self.model.visual.output_dim))
        crops = roi_align(pixels.float(), [b.float() for b in boxes], self.size, aligned=True)
        embedding = self.model.encode_image((crops - self.mean) / self.std)
        return F.normalize(embedding.float(), dim=1)


def build_clip(model_name: str, weights: str) -> ClipEmbedding:
    import open_clip

    model = open_clip.create_model(model_name, pretrained=weights)
    visual = model.visual
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    return ClipEmbedding(model, tuple(mean), tuple(std), int(size))


class KeypointPose(nn.Module):
    """A Keypoint R-CNN's keypoint head on given boxes -> box-normalised keypoints (K, 2 * keypoints)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> KeypointPose:
        super().train(mode)
        self.model.eval()
        return self

    @property
    def dim(self) -> int:
        return 2 * int(self.model.roi_heads.keypoint_predictor.kps_score_lowres.out_channels)

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        from torchvision.models.detection.roi_heads import keypointrcnn_inference

        if sum(len(b) for b in boxes) == 0:
            return pixels.new_zeros(0, self.dim)
        images, _ = self.model.transform(list(pixels.float().clamp(0, 1)))
        original = pixels.shape[-2:]
        scaled = []
        for b, size in zip(boxes, images.image_sizes, strict=True):
            ratio = torch.tensor(
                [size[1] / original[1], size[0] / original[0]] * 2, device=b.device, dtype=torch.float32
            )
            scaled.append(b.float() * ratio)
        features = self.model.backbone(images.tensors)
        if isinstance(features, torch.Tensor):  # a single-map backbone, as GeneralizedRCNN accepts it
            features = {"0": features}
        heads = self.model.roi_heads
        pooled = heads.keypoint_head(heads.keypoint_roi_pool(features, scaled, images.image_sizes))
        keypoints, _ = keypointrcnn_inference(heads.keypoint_predictor(pooled), scaled)
        rows = []
        for points, box in zip(keypoints, scaled, strict=True):
            if len(box) == 0:
                continue
            origin, extent = box[:, None, :2], (box[:, None, 2:] - box[:, None, :2]).clamp_min(1e-6)
            rows.append(((points[..., :2] - origin) / extent).flatten(1))
        return torch.cat(rows).float()
