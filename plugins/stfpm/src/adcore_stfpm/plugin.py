"""Entry point: registers STFPM with adcore (a card; the model is imported on first use)."""

from adcore import DetectorCard, hookimpl

ADCORE_API = ">=2,<3"

CARD = DetectorCard(
    name="stfpm",
    target="adcore_stfpm.model:Stfpm",
    summary="STFPM: a frozen pretrained teacher, a student of the same architecture trained from scratch",
    paper="Wang et al., Student-Teacher Feature Pyramid Matching for Anomaly Detection, BMVC 2021",
    paper_url="https://arxiv.org/abs/2103.04257",
    training_kind="gradient",
    results={
        "conditions": "tf_efficientnet_lite0 (packaged ImageNet weights), 256 px, defaults (15 epochs), 2 CPU cores",
        "mvtec_ad/bottle": {"image_auroc": 1.000, "pixel_auroc": 0.988, "pixel_aupro": 0.968},
    },
)


@hookimpl
def adcore_register_detectors(register):
    register(CARD)
