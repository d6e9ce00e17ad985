"""STFPM: Student-Teacher Feature Pyramid Matching (Wang et al., BMVC 2021)."""

from adcore_stfpm.model import Stfpm, StfpmConfig

__all__ = ["Stfpm", "StfpmConfig"]
