"""U-Flow: a U-shaped normalizing flow for anomaly detection with an unsupervised threshold (Tailanian et al. 2023).

The detector lives in ``adcore_uflow.model``; the package imports nothing, so loading the entry
point (``adcore_uflow.plugin``) imports no torch or model code.
"""
