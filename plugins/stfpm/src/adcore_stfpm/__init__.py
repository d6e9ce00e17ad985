"""STFPM: Student-Teacher Feature Pyramid Matching (Wang et al., BMVC 2021).

The detector lives in ``adcore_stfpm.model``; the package imports nothing, so loading the entry
point (``adcore_stfpm.plugin``) imports no torch or model code.
"""
