"""Entry point: registers PatchCore with adcore."""

from adcore import hookimpl

ADCORE_API = ">=1,<2"


@hookimpl
def adcore_register_detectors(register):
    from adcore_patchcore.model import Patchcore

    register(Patchcore)
