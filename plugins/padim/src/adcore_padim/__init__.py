"""PaDiM: Patch Distribution Modeling (Defard et al., ICPR 2020)."""

from adcore_padim.model import Padim, PadimConfig

__all__ = ["Padim", "PadimConfig"]
