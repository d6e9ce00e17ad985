"""Entry point: registers CS-Flow with adcore."""

from adcore import hookimpl

ADCORE_API = ">=1,<2"


@hookimpl
def adcore_register_detectors(register):
    from adcore_csflow.model import CsFlow

    register(CsFlow)
