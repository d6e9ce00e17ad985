"""AI-VAD on real footage (OpenCV's vtest.avi) through the command line, offline default configuration.

A small version of benchmarks/make_video_benchmark.py is built in tmp_path: 200 training
frames in 4 videos, one normal test video and one where 20 frames play the scene 4 times
faster (frames 10-29 labelled anomalous), frames at a quarter of the source resolution.
The velocity attribute alone (``use_deep_features=false``: the test is about velocity and
skips the backbone's cost) must make the fast frames stand out: frame AUROC >= 0.9 (the full
benchmark's numbers are in the plugin README); broken flow or a broken GMM scores ~0.5.
"""

import importlib.util
import json
from pathlib import Path

import pytest
from adcore.cli import main

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _builder():
    spec = importlib.util.spec_from_file_location(
        "make_video_benchmark", ROOT / "benchmarks" / "make_video_benchmark.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build


def test_ai_vad_finds_fast_motion_in_real_footage(shared_dataset, tmp_path):
    source = shared_dataset("video") / "vtest.avi"
    bench = tmp_path / "bench"
    construction = _builder()(
        bench,
        source,
        scale=0.25,
        seed=0,
        train_frames=200,
        train_videos=4,
        speeds=(4,),
        normal_videos=1,
        paste_videos=0,
        segment=40,
        lead=10,
        fast=20,
        max_frames=400,
    )
    assert construction["test"]["speed_x4"]["anomalous_frames"] == list(range(10, 30))
    output = tmp_path / "run"
    fit = [
        "fit",
        "--model",
        "ai-vad",
        "--data",
        f"video:folder:{bench}",
        "--output",
        str(output),
        "--image-size",
        "144,192",
        "--param",
        "use_deep_features=false",
        "--no-progress",
    ]
    assert main(fit) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["image_auroc"] >= 0.9, metrics
