"""Reverse Distillation (Deng & Li, CVPR 2022): a frozen teacher encoder, a one-class bottleneck, a student decoder.

The detector lives in ``adcore_reverse_distillation.model``; the package imports nothing, so loading
the entry point (``adcore_reverse_distillation.plugin``) imports no torch or model code.
"""
