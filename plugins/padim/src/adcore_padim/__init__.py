"""PaDiM: Patch Distribution Modeling (Defard et al., ICPR 2020).

The detector lives in ``adcore_padim.model``; the package imports nothing, so loading the entry
point (``adcore_padim.plugin``) imports no torch or model code.
"""
