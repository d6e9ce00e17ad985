"""Entry point: registers AI-VAD with adcore (a card; the model is imported on first use)."""

from adcore import DetectorCard, hookimpl

ADCORE_API = ">=2,<3"

CARD = DetectorCard(
    name="ai-vad",
    target="adcore_ai_vad.model:AiVad",
    summary=(
        "Video: velocity (flow-orientation histograms, GMM), pose and deep features (grouped kNN) of "
        "foreground regions; frame score = max over regions of the summed normalised scores"
    ),
    paper=(
        "Reiss and Hoshen, Attribute-based Representations for Accurate and Interpretable Video Anomaly Detection, 2022"
    ),
    paper_url="https://arxiv.org/abs/2212.00789",
    training_kind="fit_once",
    default_image_size=(240, 320),
    results={
        "conditions": (
            "offline default (background-subtraction regions, Farneback flow, velocity GMM + tf_efficientnet_lite0 "
            "RoI features with grouped kNN; pose skipped), 240x320, CPU fp32, seed 0, 2 CPU cores heavily loaded "
            "(load 10-11); benchmark: benchmarks/make_video_benchmark.py on vtest.avi (scale 0.5, seed 0); "
            "frame AUROC per anomaly type with the normal test videos"
        ),
        "vtest/velocity": {"frame_auroc": 0.930, "frame_auroc_velocity_only": 0.937, "frame_auroc_deep_only": 0.420},
        "vtest/appearance": {"frame_auroc": 0.623, "frame_auroc_velocity_only": 0.274, "frame_auroc_deep_only": 0.688},
        "vtest/all": {"frame_auroc": 0.798, "fit_frames_per_s": 0.84, "predict_frames_per_s": 1.5},
    },
)


@hookimpl
def adcore_register_detectors(register):
    register(CARD)
