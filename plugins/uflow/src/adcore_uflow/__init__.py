"""U-Flow: a U-shaped normalizing flow for anomaly detection with an unsupervised threshold (Tailanian et al. 2023)."""

from adcore_uflow.model import Uflow, UflowConfig

__all__ = ["Uflow", "UflowConfig"]
