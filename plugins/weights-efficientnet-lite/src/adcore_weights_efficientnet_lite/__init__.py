"""Offline ImageNet weights for timm's ``tf_efficientnet_lite0/1/2``, as an adcore plugin.

The provider lives in ``adcore_weights_efficientnet_lite.provider``; the package imports nothing, so loading the
entry point (``adcore_weights_efficientnet_lite.plugin``) imports no torch.
"""
