"""Entry point: registers CFlow with adcore (a card; the model is imported on first use)."""

from adcore import DetectorCard, hookimpl

ADCORE_API = ">=2,<3"

CARD = DetectorCard(
    name="cflow",
    target="adcore_cflow.model:Cflow",
    summary="CFlow: conditional normalizing flows decode a frozen encoder's features, conditioned on their position",
    paper=(
        "Gudovskiy, Ishizaka and Kozuka, CFLOW-AD: Real-Time Unsupervised Anomaly Detection with "
        "Localization via Conditional Normalizing Flows, WACV 2022"
    ),
    paper_url="https://arxiv.org/abs/2107.12571",
    training_kind="gradient",
    results={
        "conditions": "tf_efficientnet_lite0 (packaged ImageNet weights), 256 px, defaults (2 epochs), 2 CPU cores",
        "mvtec_ad/bottle": {"image_auroc": 1.000, "pixel_auroc": 0.980, "pixel_aupro": 0.929},
    },
)


@hookimpl
def adcore_register_detectors(register):
    register(CARD)
