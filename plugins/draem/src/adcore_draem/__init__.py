"""DRAEM: a discriminatively trained reconstruction embedding (Zavrtanik et al., ICCV 2021).

The detector lives in ``adcore_draem.model``; the package imports nothing, so loading the entry
point (``adcore_draem.plugin``) imports no torch or model code.
"""
