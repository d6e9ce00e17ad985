"""DFKDE: Deep Feature Kernel Density Estimation (anomalib"s DFKDE).

The detector lives in ``adcore_dfkde.model``; the package imports nothing, so loading the entry
point (``adcore_dfkde.plugin``) imports no torch or model code.
"""
