"""Entry point: registers DFKDE with adcore (a card; the model is imported on first use)."""

from adcore import DetectorCard, hookimpl

ADCORE_API = ">=2,<3"

CARD = DetectorCard(
    name="dfkde",
    target="adcore_dfkde.model:Dfkde",
    summary="Gaussian kernel density of PCA-reduced, pooled deep features (image score only, no localisation)",
    paper=(
        "Deep Feature Kernel Density Estimation as in anomalib: Akcay et al., "
        "Anomalib: A Deep Learning Library for Anomaly Detection, ICIP 2022"
    ),
    paper_url="https://arxiv.org/abs/2202.08341",
    training_kind="fit_once",
    results={
        # The anomaly map is the image score at every pixel: pixel metrics carry no information.
        "conditions": "tf_efficientnet_lite0 (packaged ImageNet weights), 256 px, defaults, 2 CPU cores",
        "mvtec_ad/bottle": {"image_auroc": 0.994},
    },
)


@hookimpl
def adcore_register_detectors(register):
    register(CARD)
