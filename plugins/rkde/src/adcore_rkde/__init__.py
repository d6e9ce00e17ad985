"""R-KDE: region-based kernel density estimation (anomalib's R-KDE).

The detector lives in ``adcore_rkde.model``; the package imports nothing, so loading the entry
point (``adcore_rkde.plugin``) imports no torch or model code.
"""
