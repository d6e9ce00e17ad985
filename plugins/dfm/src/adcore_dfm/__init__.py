"""DFM: Deep Feature Modeling (Ahuja et al. 2019)."""

from adcore_dfm.model import Dfm, DfmConfig

__all__ = ["Dfm", "DfmConfig"]
