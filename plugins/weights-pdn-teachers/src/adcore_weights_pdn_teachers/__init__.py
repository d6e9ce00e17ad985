"""Distilled EfficientAD teacher PDNs as an adcore resource provider; the package imports nothing.

The provider lives in ``adcore_weights_pdn_teachers.provider``; the entry point
(``adcore_weights_pdn_teachers.plugin``) imports no torch.
"""
