"""Export on the real MVTec bottle data: ONNX and OpenVINO outputs equal eager PyTorch (fp32).

Each model is fitted with a tiny budget (a subset of the training images, one epoch for the
gradient-trained ones) and calibrated on a few test images: the point is the exported graph's
arithmetic, not accuracy. The equality is checked on real test images (good and broken):
raw score and map within 1e-4 of their scale; normalised score and map within 1e-4 absolutely,
or within what that raw tolerance becomes through the normalisation, ``(x - t) / span + 0.5``,
when the calibrated span is narrower than the raw scale (a one-epoch fit calibrated on 12
images can have a span of a few hundredths: float rounding of 1e-6 in the raw score, between
oneDNN's and ONNX Runtime's convolutions, is then over 1e-4 in the normalised one).
EfficientAD and Reverse Distillation are checked too when their plugins are installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from adcore.data import AnomalyDataset, load_data
from adcore.engine import Engine
from adcore.export import export_detector
from adcore.plugins import create_detector, get_registry

pytest.importorskip("onnxruntime", reason="export extras not installed: pip install 'adcore[export]'")
pytest.importorskip("openvino")
adcore_runtime = pytest.importorskip("adcore_runtime")

pytestmark = pytest.mark.e2e

N_TRAIN, N_CALIBRATE, N_CHECK = 24, 12, 10
#: the training budget of each model (budgets only: the export itself knows no model)
BUDGETS = {
    "padim": {},
    "patchcore": {},
    "stfpm": {"epochs": 1},
    "fastflow": {"epochs": 1},
    "efficientad": {"steps": 10},
    "reverse_distillation": {"epochs": 1},
}
OPTIONAL = {"efficientad", "reverse_distillation"}
TOLERANCE = 1e-4


def _spread(records, n):
    """``n`` records spread evenly (good and broken images alike)."""
    step = (len(records) - 1) / max(n - 1, 1)
    return [records[round(i * step)] for i in range(n)]


@pytest.fixture(scope="module")
def bottle_splits(bottle_dir):
    return load_data(f"mvtec:{bottle_dir}")


@pytest.mark.parametrize("name", list(BUDGETS))
def test_onnx_and_openvino_equal_eager_on_bottle(name, bottle_splits, tmp_path):
    if name not in get_registry().detectors:
        if name in OPTIONAL:
            pytest.skip(f"plugin for {name} is not installed")
        pytest.fail(f"detector {name} is not installed")
    detector = create_detector(name, seed=0)
    spec = detector.input_spec
    train = AnomalyDataset(bottle_splits.train[:N_TRAIN], spec)
    calibrate = AnomalyDataset(_spread(bottle_splits.test, N_CALIBRATE), spec, has_masks=True)
    engine = Engine(device="cpu", progress=False, batch_size=8, seed=0, **BUDGETS[name])
    engine.fit(detector, train, calibrate)
    assert detector.post_processor.is_calibrated

    check = AnomalyDataset(_spread(bottle_splits.test[1:], N_CHECK), spec)
    pixels = torch.stack([check.raw(i)[0] for i in range(len(check))]).float() / 255.0
    with torch.inference_mode():
        out = detector.predict(torch.stack([check[i]["image"] for i in range(len(check))]))
    post = detector.post_processor
    spans = {
        "image": (float(post.image_min), float(post.image_max)),
        "pixel": (float(post.pixel_min), float(post.pixel_max)),
    }
    eager = {"pred_score": out.pred_score, "normalized_score": post.normalize_scores(out.pred_score)}
    if out.anomaly_map is not None:
        eager.update(anomaly_map=out.anomaly_map, normalized_map=post.normalize_maps(out.anomaly_map))

    onnx_result = export_detector(detector, "onnx", tmp_path / f"{name}.onnx")
    openvino_result = export_detector(
        detector, "openvino", tmp_path / f"{name}.xml", onnx_file=onnx_result.path, check=False
    )
    assert onnx_result.metadata["outputs"] == list(eager)
    for result in (onnx_result, openvino_result):
        model = adcore_runtime.load(result.path)
        outputs = model.run(pixels.numpy())
        for key, reference in eager.items():
            got = torch.from_numpy(np.asarray(outputs[key])).float().reshape(reference.shape)
            if key.startswith("normalized"):
                raw, (low, high) = (
                    (eager["pred_score"], spans["image"])
                    if key == "normalized_score"
                    else (eager["anomaly_map"], spans["pixel"])
                )
                scale = max(1.0, max(1.0, float(raw.abs().max())) / (high - low))
            else:
                scale = max(1.0, float(reference.abs().max()))
            difference = float((got - reference.float()).abs().max())
            assert difference <= TOLERANCE * scale, f"{name} {result.format} {key}: {difference:.3g}"
