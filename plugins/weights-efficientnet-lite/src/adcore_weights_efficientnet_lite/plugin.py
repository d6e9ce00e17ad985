"""Entry point module: registers the provider with adcore's plugin manager."""

from adcore import hookimpl

from adcore_weights_efficientnet_lite.provider import EfficientNetLiteWeights

ADCORE_API = ">=1,<2"


@hookimpl
def adcore_register_weights(register):
    register(EfficientNetLiteWeights())
