"""CFA: Coupled-hypersphere-based Feature Adaptation (Lee, Lee and Song, IEEE Access 2022)."""

from adcore_cfa.model import Cfa, CfaConfig

__all__ = ["Cfa", "CfaConfig"]
