"""Entry point: registers FastFlow with adcore (a card; the model is imported on first use)."""

from adcore import DetectorCard, hookimpl

ADCORE_API = ">=2,<3"

CARD = DetectorCard(
    name="fastflow",
    target="adcore_fastflow.model:Fastflow",
    summary="FastFlow: 2-D normalizing flows on frozen multi-scale features, alternating 3x3/1x1 subnets",
    paper="Yu et al., FastFlow: Unsupervised Anomaly Detection and Localization via 2D Normalizing Flows, 2021",
    paper_url="https://arxiv.org/abs/2111.07677",
    training_kind="gradient",
    results={
        "conditions": "tf_efficientnet_lite0 (packaged ImageNet weights), 256 px, defaults (6 epochs), 2 CPU cores",
        "mvtec_ad/bottle": {"image_auroc": 1.000, "pixel_auroc": 0.978, "pixel_aupro": 0.898},
    },
)


@hookimpl
def adcore_register_detectors(register):
    register(CARD)
