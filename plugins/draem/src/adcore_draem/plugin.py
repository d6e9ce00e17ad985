"""Entry point: registers DRAEM with adcore (a card; the model is imported on first use)."""

from adcore import DetectorCard, hookimpl

ADCORE_API = ">=2,<3"

CARD = DetectorCard(
    name="draem",
    target="adcore_draem.model:Draem",
    summary="DRAEM: reconstruct images from synthetic anomalies, segment the anomalies from image and reconstruction",
    paper=(
        "Zavrtanik, Kristan, Skocaj, DRAEM - A discriminatively trained reconstruction embedding "
        "for surface anomaly detection, ICCV 2021"
    ),
    paper_url="https://arxiv.org/abs/2108.07610",
    training_kind="gradient",
    default_image_size=(128, 128),
    results={
        # Not the defaults' finished run (120 epochs could not be timed on the shared machine):
        # a complete 5-epoch run, the e2e test's configuration. See README for the curve.
        "conditions": (
            "128 px, base_width 8, disc_base_width 8, 5 epochs, learning_rate 1e-3, batch 8, "
            "dtd_subset textures, seed 0, fp32, 2 CPU threads"
        ),
        "mvtec_ad/bottle": {"image_auroc": 0.797, "pixel_auroc": 0.741, "pixel_aupro": 0.500},
    },
)


@hookimpl
def adcore_register_detectors(register):
    register(CARD)
