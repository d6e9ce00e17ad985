"""Entry point: registers WinCLIP with adcore (a card; the model is imported on first use)."""

from adcore import DetectorCard, hookimpl

ADCORE_API = ">=2,<3"

CARD = DetectorCard(
    name="winclip",
    target="adcore_winclip.model:WinCLIP",
    summary=(
        "CLIP windows scored against normal/anomalous prompt ensembles (zero-shot); "
        "with --param k_shot=K, also the distance to K normal references (few-shot)"
    ),
    paper="Jeong et al., WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation, CVPR 2023",
    paper_url="https://arxiv.org/abs/2303.14814",
    # The default (k_shot=0). With k_shot > 0 an instance is few_shot / fit_once (see the README).
    learning_type="zero_shot",
    training_kind="none",
    default_image_size=(240, 240),
    results={
        "conditions": "no accuracy measured: no CLIP weights are available offline where this plugin was built",
    },
)


@hookimpl
def adcore_register_detectors(register):
    register(CARD)
