"""Entry point: registers CFlow with adcore."""

from adcore import hookimpl

ADCORE_API = ">=1,<2"


@hookimpl
def adcore_register_detectors(register):
    from adcore_cflow.model import Cflow

    register(Cflow)
