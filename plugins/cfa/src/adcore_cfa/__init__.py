"""CFA: Coupled-hypersphere-based Feature Adaptation (Lee, Lee and Song, IEEE Access 2022).

The detector lives in ``adcore_cfa.model``; the package imports nothing, so loading the entry
point (``adcore_cfa.plugin``) imports no torch or model code.
"""
