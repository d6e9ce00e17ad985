"""Focal loss (Lin et al., 2017) for per-pixel anomaly segmentation.

Methods trained on synthetic anomalies (DRAEM, DSR) segment masks in which the anomalous
pixels are a small minority: plain cross-entropy is dominated by the many easy normal pixels.
The focal term ``(1 - p_t)^gamma`` makes easy pixels (p_t near 1) contribute almost nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean over pixels of ``-(1 - p_t)^gamma * log p_t``, p_t the softmax probability of the true class.

    ``logits`` (N, C, H, W); ``target`` (N, 1, H, W) class indices (for a binary mask: 0 or 1).
    ``gamma = 0`` is plain cross-entropy.
    """
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, target.long())
    return (-((1 - log_p.exp()) ** gamma) * log_p).mean()
