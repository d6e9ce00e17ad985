"""Entry point: registers CFA with adcore."""

from adcore import hookimpl

ADCORE_API = ">=1,<2"


@hookimpl
def adcore_register_detectors(register):
    from adcore_cfa.model import Cfa

    register(Cfa)
