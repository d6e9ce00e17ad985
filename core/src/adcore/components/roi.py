"""Features of image regions: RoI-align on backbone feature maps (Mask R-CNN's RoIAlign).

Region-based detectors (R-KDE's boxes, AI-VAD's objects) describe each box by the backbone
features inside it: every map is sampled on an ``output_size`` x ``output_size`` grid over the
box (bilinear, 2 samples per bin, pixel-aligned), and the levels are concatenated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def roi_features(
    feature_maps: Sequence[torch.Tensor], strides: Sequence[int], boxes: list[torch.Tensor], output_size: int
) -> torch.Tensor:
    """(sum K_i, sum_l C_l * output_size^2): every box of every image on every map, flattened.

    ``feature_maps`` (N, C_l, h_l, w_l) with ``strides`` (input pixels per feature cell);
    ``boxes`` one (K_i, 4) tensor per image, ``(x0, y0, x1, y1)`` in input pixels.
    """
    from torchvision.ops import roi_align

    if sum(len(b) for b in boxes) == 0:
        return feature_maps[0].new_zeros(0, sum(f.shape[1] for f in feature_maps) * output_size**2)
    parts = [
        roi_align(
            feature.float(),
            [b.float() for b in boxes],
            output_size=output_size,
            spatial_scale=1.0 / stride,
            sampling_ratio=2,
            aligned=True,
        ).flatten(1)
        for feature, stride in zip(feature_maps, strides, strict=True)
    ]
    return torch.cat(parts, dim=1)
