"""Entry point: registers CFA with adcore (a card; the model is imported on first use)."""

from adcore import DetectorCard, hookimpl

ADCORE_API = ">=2,<3"

CARD = DetectorCard(
    name="cfa",
    target="adcore_cfa.model:Cfa",
    summary="CFA: a trainable patch descriptor pulls normal features into hyperspheres around memory-bank centroids",
    paper=(
        "Lee, Lee and Song, CFA: Coupled-hypersphere-based Feature Adaptation for Target-Oriented "
        "Anomaly Localization, IEEE Access 2022"
    ),
    paper_url="https://arxiv.org/abs/2206.04325",
    training_kind="gradient",
    results={
        "conditions": "tf_efficientnet_lite0 (packaged ImageNet weights), 256 px, defaults (10 epochs), 2 CPU cores",
        "mvtec_ad/bottle": {"image_auroc": 0.998, "pixel_auroc": 0.969, "pixel_aupro": 0.895},
    },
)


@hookimpl
def adcore_register_detectors(register):
    register(CARD)
