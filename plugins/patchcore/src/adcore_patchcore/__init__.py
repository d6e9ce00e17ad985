"""PatchCore: Towards Total Recall in Industrial Anomaly Detection (Roth et al., CVPR 2022).

The detector lives in ``adcore_patchcore.model``; the package imports nothing, so loading the entry
point (``adcore_patchcore.plugin``) imports no torch or model code.
"""
