"""Entry point: registers U-Flow with adcore."""

from adcore import hookimpl

ADCORE_API = ">=1,<2"


@hookimpl
def adcore_register_detectors(register):
    from adcore_uflow.model import Uflow

    register(Uflow)
