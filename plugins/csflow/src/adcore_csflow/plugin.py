"""Entry point: registers CS-Flow with adcore (a card; the model is imported on first use)."""

from adcore import DetectorCard, hookimpl

ADCORE_API = ">=2,<3"

CARD = DetectorCard(
    name="csflow",
    target="adcore_csflow.model:CsFlow",
    summary="CS-Flow: a fully convolutional cross-scale normalizing flow over three image scales",
    paper=(
        "Rudolph, Wehrbein, Rosenhahn, Wandt, Fully Convolutional Cross-Scale-Flows for Image-based "
        "Defect Detection, WACV 2022"
    ),
    paper_url="https://arxiv.org/abs/2110.02855",
    training_kind="gradient",
    results={
        "conditions": "tf_efficientnet_lite0 (packaged ImageNet weights), 256 px, defaults (8 epochs), 2 CPU cores",
        "mvtec_ad/bottle": {"image_auroc": 0.996, "pixel_auroc": 0.961, "pixel_aupro": 0.897},
    },
)


@hookimpl
def adcore_register_detectors(register):
    register(CARD)
