"""CFlow: real-time unsupervised anomaly detection with conditional normalizing flows (Gudovskiy et al., WACV 2022)."""

from adcore_cflow.model import Cflow, CflowConfig

__all__ = ["Cflow", "CflowConfig"]
