"""FastFlow: unsupervised anomaly detection with 2-D normalizing flows (Yu et al., 2021)."""

from adcore_fastflow.model import Fastflow, FastflowConfig

__all__ = ["Fastflow", "FastflowConfig"]
