"""Entry point: registers Reverse Distillation with adcore (a card; the model is imported on first use)."""

from adcore import DetectorCard, hookimpl

ADCORE_API = ">=2,<3"

CARD = DetectorCard(
    name="reverse_distillation",
    target="adcore_reverse_distillation.model:ReverseDistillation",
    summary="Reverse Distillation: a student decoder rebuilds a frozen encoder's features from a one-class embedding",
    paper="Deng and Li, Anomaly Detection via Reverse Distillation from One-Class Embedding, CVPR 2022",
    paper_url="https://arxiv.org/abs/2201.10703",
    training_kind="gradient",
    results={
        "conditions": (
            "tf_efficientnet_lite0 (packaged ImageNet weights), layers 1,2,3, 256 px, defaults (9 epochs, Adam lr 0.005), "
            "fp32, 2 CPU cores, benchmarks/bench_models.py"
        ),
        "mvtec_ad/bottle": {"image_auroc": 0.999, "pixel_auroc": 0.984, "pixel_aupro": 0.962},
        "kolektorsdd": {"image_auroc": 0.502, "pixel_auroc": 0.718, "pixel_aupro": 0.249},
        "mvtec_loco/juice_bottle": {"image_auroc": 0.864, "pixel_auroc": 0.912, "pixel_aupro": 0.858},
    },
)


@hookimpl
def adcore_register_detectors(register):
    register(CARD)
