"""Entry point: registers R-KDE with adcore (a card; the model is imported on first use)."""

from adcore import DetectorCard, hookimpl

ADCORE_API = ">=2,<3"

CARD = DetectorCard(
    name="rkde",
    target="adcore_rkde.model:Rkde",
    summary="Gaussian kernel density of PCA-reduced region features; one score per region (boxes in the output)",
    paper=(
        "Region Based Anomaly Detection With Real-Time Training and Analysis, ICMLA 2019 "
        "(R-KDE as implemented in anomalib)"
    ),
    paper_url="https://ieeexplore.ieee.org/abstract/document/8999287",
    training_kind="fit_once",
    results={
        "conditions": (
            "offline grid regions, tf_efficientnet_lite0 (packaged ImageNet weights) layer 3, 256 px, defaults, "
            "2 CPU cores (heavily loaded); fit_cpu_s: CPU seconds of the fit"
        ),
        "mvtec_ad/bottle": {"image_auroc": 0.999, "pixel_auroc": 0.940, "pixel_aupro": 0.714, "fit_cpu_s": 30.7},
        "kolektorsdd": {"image_auroc": 0.666, "pixel_auroc": 0.714, "pixel_aupro": 0.251, "fit_cpu_s": 23.8},
        "mvtec_loco/juice_bottle": {
            "image_auroc": 0.893,
            "pixel_auroc": 0.846,
            "pixel_aupro": 0.646,
            "fit_cpu_s": 55.8,
        },
    },
)


@hookimpl
def adcore_register_detectors(register):
    register(CARD)
