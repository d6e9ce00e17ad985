"""Entry point: registers DFM with adcore."""

from adcore import hookimpl

ADCORE_API = ">=1,<2"


@hookimpl
def adcore_register_detectors(register):
    from adcore_dfm.model import Dfm

    register(Dfm)
