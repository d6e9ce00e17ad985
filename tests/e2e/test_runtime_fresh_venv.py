"""The light runtime in a fresh virtual environment without torch scores like ``adcore predict``.

A PaDiM fitted on a few real bottle images is exported to ONNX; ``adcore-runtime[onnx]`` is
installed from the repository's ``runtime/`` folder into a new venv (numpy, Pillow and ONNX
Runtime from the package registry, nothing else), where torch cannot be imported. There,
``python -m adcore_runtime`` scores real test images; its normalised scores must equal the
``predictions.csv`` of ``adcore predict`` within 1e-4, with the same verdicts.

It builds a venv (about a minute), so it is an end-to-end test.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from adcore.checkpoint import save_checkpoint
from adcore.cli import main
from adcore.data import AnomalyDataset, load_data
from adcore.engine import Engine
from adcore.plugins import create_detector

pytest.importorskip("onnx", reason="export extras not installed: pip install 'adcore[export]'")

pytestmark = pytest.mark.e2e

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"
N_TRAIN = 30


def _run(*command, **kwargs):
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=900, check=False, **kwargs
    )
    assert result.returncode == 0, f"{command[:4]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def test_runtime_in_a_fresh_venv_without_torch_matches_adcore_predict(bottle_dir, tmp_path):
    splits = load_data(f"mvtec:{bottle_dir}")
    test = splits.test
    calibrate, scored = test[0::2], test[1::2][::2]  # disjoint: no scored image sits on the threshold
    detector = create_detector("padim", seed=0)
    engine = Engine(device="cpu", progress=False, batch_size=16)
    engine.fit(
        detector,
        AnomalyDataset(splits.train[:N_TRAIN], detector.input_spec),
        AnomalyDataset(calibrate, detector.input_spec, has_masks=True),
    )
    checkpoint = save_checkpoint(detector, tmp_path / "model.safetensors")
    files = [str(r.path) for r in scored]
    assert (
        main(["predict", "--checkpoint", str(checkpoint), *files, "--output", str(tmp_path / "p"), "--no-progress"])
        == 0
    )
    with open(tmp_path / "p" / "predictions.csv", newline="") as handle:
        expected = {row["path"]: row for row in csv.DictReader(handle)}
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--no-check"]) == 0
    model = tmp_path / "model.onnx"

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{RUNTIME}[onnx]", env=env)
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, env=env, check=False)
    assert no_torch.returncode != 0, "torch must not be installed in the runtime's venv"
    listed = _run(python, "-m", "pip", "list", "--format=json", env=env).stdout
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert not installed & {"torch", "timm", "adcore"} and {"onnxruntime", "numpy", "pillow"} <= installed

    out = _run(python, "-m", "adcore_runtime", model, *files, "--json", env=env, cwd=tmp_path).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in rows] == files
    verdicts = []
    for row in rows:
        reference = expected[row["path"]]
        assert abs(row["normalized_score"] - float(reference["normalized_score"])) <= 1e-4, row["path"]
        assert row["is_anomalous"] == (reference["is_anomalous"] == "True"), row["path"]
        verdicts.append(row["is_anomalous"])
    assert 0 < sum(verdicts) < len(verdicts)  # both verdicts occur: the comparison is not vacuous
