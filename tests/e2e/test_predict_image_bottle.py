"""predict_image on a real bottle image equals the CLI's score, for every kind of input.

A hand-made pipeline (torch resize of the array) scores the same image differently: that was
the bug (807.22 by hand against 804.91 from the CLI); predict_image uses the dataset's own
preprocessing, so it cannot drift from the CLI.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from adcore.checkpoint import load_checkpoint
from adcore.cli import main
from PIL import Image

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def checkpoint(bottle_dir, tmp_path_factory):
    normal = tmp_path_factory.mktemp("bottle-normal")
    for path in sorted((bottle_dir / "train" / "good").glob("*.png"))[:30]:
        (normal / path.name).symlink_to(path)  # read in place, never copied
    run = tmp_path_factory.mktemp("bottle-run") / "padim"
    code = main(
        [
            "fit",
            "--model",
            "padim",
            "--data",
            f"folder:normal={normal}",
            "--output",
            str(run),
            "--image-size",
            "128",
            "--param",
            "layers=1,2",
            "--param",
            "n_features=50",
            "--no-progress",
        ]
    )
    assert code == 0
    return run / "model.safetensors"


def test_predict_image_equals_the_cli_for_all_input_kinds(checkpoint, bottle_dir, tmp_path):
    image_path = bottle_dir / "test" / "broken_small" / "000.png"
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoint),
                str(image_path),
                "--output",
                str(out),
                "--format",
                "json",
                "--no-progress",
            ]
        )
        == 0
    )
    (row,) = json.loads((out / "predictions.json").read_text())
    detector, _ = load_checkpoint(checkpoint)
    array = np.asarray(Image.open(image_path).convert("RGB"))
    inputs = {
        "path": image_path,
        "PIL": Image.open(image_path),
        "numpy uint8": array,
        "numpy float": array.astype(np.float32) / 255.0,
        "torch tensor": torch.from_numpy(array.copy()).permute(2, 0, 1),
    }
    for kind, value in inputs.items():
        result = detector.predict_image(value)
        assert abs(result.score - row["score"]) <= 1e-5, kind
        assert result.normalized_score == pytest.approx(row["normalized_score"], abs=1e-6), kind
        assert result.is_anomalous == row["is_anomalous"], kind
        assert result.anomaly_map.shape == array.shape[:2] and result.mask.shape == array.shape[:2]
    # The hand-made preprocessing of the issue (torch's resize of the array) does not give the CLI's score.
    pixels = torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float()
    resized = F.interpolate(pixels, size=detector.input_spec.image_size, mode="bilinear", antialias=False)
    with torch.inference_mode():
        hand = float(detector.predict(detector.input_spec.normalize(resized)).pred_score[0])
    assert abs(hand - row["score"]) > 1e-3
