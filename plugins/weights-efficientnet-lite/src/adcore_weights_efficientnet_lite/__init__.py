"""Offline ImageNet weights for timm's ``tf_efficientnet_lite0/1/2``, as an adcore plugin."""

from adcore_weights_efficientnet_lite.provider import EfficientNetLiteWeights

__all__ = ["EfficientNetLiteWeights"]
