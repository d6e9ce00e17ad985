"""WinCLIP: zero-/few-shot anomaly classification and segmentation (Jeong et al., CVPR 2023).

The detector lives in ``adcore_winclip.model``; the package imports nothing, so loading the
entry point (``adcore_winclip.plugin``) imports no torch, open_clip or model code.
"""
