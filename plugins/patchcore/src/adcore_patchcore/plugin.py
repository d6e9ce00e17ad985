"""Entry point: registers PatchCore with adcore (a card; the model is imported on first use)."""

from adcore import DetectorCard, hookimpl

ADCORE_API = ">=2,<3"

CARD = DetectorCard(
    name="patchcore",
    target="adcore_patchcore.model:Patchcore",
    summary="Coreset memory bank of locally aware patch features; nearest-neighbour anomaly scores",
    paper="Roth et al., Towards Total Recall in Industrial Anomaly Detection, CVPR 2022",
    paper_url="https://arxiv.org/abs/2106.08265",
    training_kind="fit_once",
    results={
        "conditions": "tf_efficientnet_lite0 (packaged ImageNet weights), 256 px, defaults (10 % coreset), 2 CPU cores",
        "mvtec_ad/bottle": {"image_auroc": 1.000, "pixel_auroc": 0.984, "pixel_aupro": 0.936},
    },
)


@hookimpl
def adcore_register_detectors(register):
    register(CARD)
