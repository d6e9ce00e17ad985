"""Video end to end: an image detector (PaDiM) fitted and tested on a tiny generated video folder
through the CLI, frame by frame; the video's visual output; the one-line refusals."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from adcore.cli import main
from adcore.data import load_data
from adcore.data.video_dataset import VideoDataset
from adcore.data.video_synthetic import make_video_folder
from adcore.engine import Predictions
from adcore.plugins import set_registry
from adcore.protocols import InputSpec
from adcore.threads import torch_threads
from PIL import Image


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    root = make_video_folder(
        tmp_path_factory.mktemp("data") / "videos", n_train=2, n_test=2, frames=16, size=64, video_files=True
    )
    output = tmp_path_factory.mktemp("run") / "padim"
    set_registry(None)
    with torch_threads(1):
        code = main(
            ["fit", "--model", "padim", "--data", f"video:{root}", "--output", str(output), "--image-size", "64",
             "--param", "n_features=40", "--no-progress"]
        )  # fmt: skip
    set_registry(None)
    assert code == 0
    return root, output


def test_an_image_detector_fits_and_tests_on_video_frame_by_frame(video_run):
    root, output = video_run
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["data"] == "video:videos"
    # The anomaly is a white square crossing the frame: visible in single frames.
    assert metrics["image_auroc"] > 0.9 and metrics["pixel_auroc"] > 0.9
    with open(output / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 32  # every frame of both test videos: clips of one frame
    assert rows[0]["path"].endswith("test_00.avi#000000") and rows[-1]["path"].endswith("test_01.avi#000015")
    labels = [r.label for r in load_data(f"video:{root}").test]
    assert [int(row["label"]) for row in rows] == labels


def test_video_runs_write_a_contact_sheet_and_score_plots(video_run):
    _, output = video_run
    sheet = Image.open(output / "heatmaps" / "top_frames.png")
    assert sheet.width == 4 * 256 and sheet.height > 3 * 256  # 12 frames, four columns, enlarged to 256 px
    assert sorted(p.name for p in (output / "heatmaps").glob("scores_*.png")) == [
        "scores_test_00.avi.png",
        "scores_test_01.avi.png",
    ]
    assert not list((output / "heatmaps").glob("0000_*.png"))  # no per-image panels for video


def test_the_test_command_re_splits_the_video_data(video_run, tmp_path):
    _, output = video_run
    set_registry(None)
    with torch_threads(1):
        assert (
            main(
                ["test", "--checkpoint", str(output / "model.safetensors"), "--output", str(tmp_path), "--no-progress"]
            )
            == 0
        )
    again = json.loads((tmp_path / "metrics.json").read_text())
    first = json.loads((output / "metrics.json").read_text())
    assert again["image_auroc"] == pytest.approx(first["image_auroc"])
    assert (tmp_path / "heatmaps" / "top_frames.png").is_file()


def test_tiles_of_video_are_refused_in_one_line(video_run, tmp_path, capsys):
    root, _ = video_run
    code = main(["fit", "--model", "padim", "--data", f"video:{root}", "--output", str(tmp_path / "x"), "--tile", "32"])
    assert code == 2
    assert "--tile: video:videos is video data; tiles are for images" in capsys.readouterr().err


def test_contact_sheet_draws_regions_and_sorts_by_score(tmp_path):
    """The highest-scoring frames come first, with the detector's region boxes in red."""
    from adcore.video_output import write_contact_sheet, write_score_plots

    root = make_video_folder(tmp_path / "videos", n_train=1, n_test=1, frames=8, size=32)
    dataset = VideoDataset(load_data(f"video:folder:{root}").test, InputSpec((32, 32)), has_masks=True)

    class Uncalibrated:
        name = "fake"

        class post_processor:  # stands in for an uncalibrated PostProcessor
            is_calibrated = False

    scores = torch.arange(8, dtype=torch.float32)
    regions = [torch.tensor([[2.0, 2.0, 20.0, 20.0, float(s)]]) for s in scores]
    predictions = Predictions([r.path for r in dataset.records], scores, None, None, None, regions=regions)
    assert write_contact_sheet(tmp_path / "sheet.png", Uncalibrated(), dataset, predictions, count=3) == 3
    sheet = np.asarray(Image.open(tmp_path / "sheet.png"))
    red = (sheet[..., 0] > 200) & (sheet[..., 1] < 40) & (sheet[..., 2] < 40)
    assert red[20:, :].sum() > 3 * 40  # three boxes' outlines
    assert write_score_plots(tmp_path, Uncalibrated(), dataset, predictions) == 1
    assert (tmp_path / "scores_test_00.png").is_file()
