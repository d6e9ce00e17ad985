"""Entry point module: registers the provider with adcore, lazily (torch and timm load on first use)."""

from adcore import LazyProvider, hookimpl

from adcore_weights_efficientnet_lite.sources import installed_architectures

ADCORE_API = ">=2,<3"


@hookimpl
def adcore_register_resources(register):
    register(
        LazyProvider(
            name="efficientnet-lite",
            target="adcore_weights_efficientnet_lite.provider:EfficientNetLiteWeights",
            resource_ids=[f"timm:{arch}" for arch in installed_architectures()],
        )
    )
