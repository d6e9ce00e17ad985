"""Entry point: registers FastFlow with adcore."""

from adcore import hookimpl

ADCORE_API = ">=1,<2"


@hookimpl
def adcore_register_detectors(register):
    from adcore_fastflow.model import Fastflow

    register(Fastflow)
