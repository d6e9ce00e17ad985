"""DFM: Deep Feature Modeling (Ahuja et al. 2019).

The detector lives in ``adcore_dfm.model``; the package imports nothing, so loading the entry
point (``adcore_dfm.plugin``) imports no torch or model code.
"""
