"""Entry point: registers PaDiM with adcore (a card; the model is imported on first use)."""

from adcore import DetectorCard, hookimpl

ADCORE_API = ">=2,<3"

CARD = DetectorCard(
    name="padim",
    target="adcore_padim.model:Padim",
    summary="A Gaussian per patch position over pretrained features; Mahalanobis anomaly maps",
    paper=(
        "Defard et al., PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and Localization, "
        "ICPR 2020"
    ),
    paper_url="https://arxiv.org/abs/2011.08785",
    training_kind="fit_once",
    results={
        "conditions": "tf_efficientnet_lite0 (packaged ImageNet weights), 256 px, defaults, 2 CPU cores",
        "mvtec_ad/bottle": {"image_auroc": 0.996, "pixel_auroc": 0.981, "pixel_aupro": 0.924},
    },
)


@hookimpl
def adcore_register_detectors(register):
    register(CARD)
