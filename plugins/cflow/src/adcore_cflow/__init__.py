"""CFlow: real-time unsupervised anomaly detection with conditional normalizing flows (Gudovskiy et al., WACV 2022).

The detector lives in ``adcore_cflow.model``; the package imports nothing, so loading the entry
point (``adcore_cflow.plugin``) imports no torch or model code.
"""
