"""Score images with a model exported by ``adcore export``: numpy, Pillow and ONNX Runtime or
OpenVINO, no torch.

    import adcore_runtime
    model = adcore_runtime.load("model.onnx")
    result = model.predict("bottle.png")
    result.normalized_score, result.is_anomalous, result.anomaly_map, result.mask

The preprocessing (input size, resize, normalisation), thresholds and min/max come from the
file's own metadata; images are decoded and resized exactly as adcore's dataset does, so the
scores match ``adcore predict``.
"""

from adcore_runtime.backends import ExportFileError
from adcore_runtime.images import ImageError, preprocess, read_image
from adcore_runtime.model import Model, Prediction, load

__version__ = "0.1.0"
__all__ = ["ExportFileError", "ImageError", "Model", "Prediction", "__version__", "load", "preprocess", "read_image"]
