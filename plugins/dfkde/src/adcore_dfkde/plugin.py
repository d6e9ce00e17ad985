"""Entry point: registers DFKDE with adcore."""

from adcore import hookimpl

ADCORE_API = ">=1,<2"


@hookimpl
def adcore_register_detectors(register):
    from adcore_dfkde.model import Dfkde

    register(Dfkde)
