"""CS-Flow: fully convolutional cross-scale normalizing flows (Rudolph et al., WACV 2022).

The detector lives in ``adcore_csflow.model``; the package imports nothing, so loading the entry
point (``adcore_csflow.plugin``) imports no torch or model code.
"""
