"""Entry point: registers DFM with adcore (a card; the model is imported on first use)."""

from adcore import DetectorCard, hookimpl

ADCORE_API = ">=2,<3"

CARD = DetectorCard(
    name="dfm",
    target="adcore_dfm.model:Dfm",
    summary="PCA of pooled deep features; feature reconstruction error (or Gaussian likelihood) scores and maps",
    paper=(
        "Ahuja et al., Probabilistic Modeling of Deep Features for Out-of-Distribution and Adversarial Detection, "
        "2019"
    ),
    paper_url="https://arxiv.org/abs/1909.11786",
    training_kind="fit_once",
    results={
        "conditions": (
            "tf_efficientnet_lite0 (packaged ImageNet weights), 256 px, defaults (score_type=fre), 2 CPU cores"
        ),
        "mvtec_ad/bottle": {"image_auroc": 1.000, "pixel_auroc": 0.970, "pixel_aupro": 0.882},
    },
)


@hookimpl
def adcore_register_detectors(register):
    register(CARD)
