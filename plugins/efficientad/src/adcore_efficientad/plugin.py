"""Entry point: registers EfficientAD with adcore (a card; the model is imported on first use)."""

from adcore import DetectorCard, hookimpl

ADCORE_API = ">=2,<3"

CARD = DetectorCard(
    name="efficientad",
    target="adcore_efficientad.model:EfficientAd",
    summary="EfficientAD: a distilled PDN teacher, a student PDN and an autoencoder for logical anomalies",
    paper="Batzner, Heckler and König, EfficientAD: Accurate Visual Anomaly Detection at Millisecond-Level "
    "Latencies, WACV 2024",
    paper_url="https://arxiv.org/abs/2303.14535",
    training_kind="gradient",
    results={
        "conditions": "packaged PDN-S teacher (distilled 100 steps from tf_efficientnet_lite0, held-out r 0.304), "
        "256 px, bf16, batch 4, penalty images imagenet_samples, 1 thread on a 2-core CPU at load 20-35: "
        "budgets far below the paper's (results at chance; see README)",
        "mvtec_ad/bottle@30x4 steps, lr 1e-3": {"image_auroc": 0.589, "pixel_auroc": 0.501, "pixel_aupro": 0.074},
        "mvtec_ad/bottle@15x4 steps, lr 1e-4": {"image_auroc": 0.294, "pixel_auroc": 0.528, "pixel_aupro": 0.049},
    },
)


@hookimpl
def adcore_register_detectors(register):
    register(CARD)
