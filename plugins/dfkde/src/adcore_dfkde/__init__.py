"""DFKDE: Deep Feature Kernel Density Estimation (anomalib's DFKDE)."""

from adcore_dfkde.model import Dfkde, DfkdeConfig

__all__ = ["Dfkde", "DfkdeConfig"]
