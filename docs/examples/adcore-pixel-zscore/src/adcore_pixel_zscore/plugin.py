"""Registers the detector with adcore (entry point group ``adcore``)."""

from adcore import hookimpl

ADCORE_API = ">=1,<2"


@hookimpl
def adcore_register_detectors(register):
    from adcore_pixel_zscore.model import PixelZScore

    register(PixelZScore)
