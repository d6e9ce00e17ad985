"""CS-Flow: fully convolutional cross-scale normalizing flows (Rudolph et al., WACV 2022)."""

from adcore_csflow.model import AnomalyMapMode, CsFlow, CsFlowConfig

__all__ = ["AnomalyMapMode", "CsFlow", "CsFlowConfig"]
