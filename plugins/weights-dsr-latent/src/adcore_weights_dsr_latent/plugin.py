"""Entry point module: registers the latent model provider with adcore, lazily (torch loads on first use)."""

from adcore import LazyProvider, hookimpl

from adcore_weights_dsr_latent.files import shipped

ADCORE_API = ">=2,<3"


@hookimpl
def adcore_register_resources(register):
    register(
        LazyProvider(
            name="dsr-latent",
            target="adcore_weights_dsr_latent.provider:DsrLatent",
            resource_ids=[f"dsr:{name}" for name in shipped()],
        )
    )
