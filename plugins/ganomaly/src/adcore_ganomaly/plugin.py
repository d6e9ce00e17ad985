"""Entry point: registers GANomaly with adcore (a card; the model is imported on first use)."""

from adcore import DetectorCard, hookimpl

ADCORE_API = ">=2,<3"

CARD = DetectorCard(
    name="ganomaly",
    target="adcore_ganomaly.model:Ganomaly",
    summary="GANomaly: an adversarially trained encoder-decoder-encoder; score = distance between the two latent codes",
    paper="Akcay, Atapour-Abarghouei and Breckon, GANomaly: Semi-Supervised Anomaly Detection via Adversarial Training, ACCV 2018",
    paper_url="https://arxiv.org/abs/1805.06725",
    training_kind="gradient",
    results={
        "conditions": "defaults: 32 px, 15 epochs, batch 16, no pretrained weights, fp32, 1 thread on a shared 2-core CPU; "
        "image-level only (no anomaly map); seed 0",
        "mvtec_ad/bottle": {"image_auroc": 0.792},
        "kolektorsdd": {"image_auroc": 0.612},
        "mvtec_loco/juice_bottle": {"image_auroc": 0.624},
    },
)


@hookimpl
def adcore_register_detectors(register):
    register(CARD)
