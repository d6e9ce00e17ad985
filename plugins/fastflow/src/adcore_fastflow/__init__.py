"""FastFlow: unsupervised anomaly detection with 2-D normalizing flows (Yu et al., 2021).

The detector lives in ``adcore_fastflow.model``; the package imports nothing, so loading the entry
point (``adcore_fastflow.plugin``) imports no torch or model code.
"""
