"""Entry point: registers U-Flow with adcore (a card; the model is imported on first use)."""

from adcore import DetectorCard, hookimpl

ADCORE_API = ">=2,<3"

CARD = DetectorCard(
    name="uflow",
    target="adcore_uflow.model:Uflow",
    summary="U-Flow: a U-shaped multi-scale normalizing flow with an a-contrario (NFA) threshold",
    paper=(
        "Tailanian, Pardo, Musé, U-Flow: A U-shaped Normalizing Flow for Anomaly Detection with "
        "Unsupervised Threshold, JMIV 2024"
    ),
    paper_url="https://arxiv.org/abs/2211.12353",
    training_kind="gradient",
    results={
        "conditions": "tf_efficientnet_lite0 (packaged ImageNet weights), 256 px, defaults (6 epochs), 2 CPU cores",
        "mvtec_ad/bottle": {"image_auroc": 0.998, "pixel_auroc": 0.973, "pixel_aupro": 0.904},
    },
)


@hookimpl
def adcore_register_detectors(register):
    register(CARD)
