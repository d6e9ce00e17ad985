"""PatchCore: Towards Total Recall in Industrial Anomaly Detection (Roth et al., CVPR 2022)."""

from adcore_patchcore.model import Patchcore, PatchcoreConfig

__all__ = ["Patchcore", "PatchcoreConfig"]
