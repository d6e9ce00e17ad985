"""Registers the detector with adcore (entry point group ``adcore``): a card, the model loads on use."""

from adcore import DetectorCard, hookimpl

ADCORE_API = ">=2,<3"

CARD = DetectorCard(
    name="pixel-zscore",
    target="adcore_pixel_zscore.model:PixelZScore",
    summary="Per-pixel z-scores against the normal images' statistics (aligned objects; an example plugin)",
    training_kind="fit_once",
    results={"mvtec_ad/bottle": {"image_auroc": 0.979, "pixel_auroc": 0.960}},
)


@hookimpl
def adcore_register_detectors(register):
    register(CARD)
