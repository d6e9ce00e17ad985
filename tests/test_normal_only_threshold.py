"""Normal-only data (folder:normal=DIR): fit holds out training images for thresholds, predict has verdicts."""

import json

import pytest
from adcore.cli import main
from adcore.engine import Engine
from adcore.run import fit_run
from helpers import anomalous_image, normal_image, save_png
from tiny_detectors import TinyMean


@pytest.fixture
def normal_folder(tmp_path):
    folder = tmp_path / "ok"
    for i in range(10):
        save_png(folder / f"{i:02d}.png", normal_image(i))
    return folder


def _engine():
    return Engine(device="cpu", progress=False, log=lambda message: None)


def test_fit_holds_out_training_images_and_learns_thresholds(normal_folder, tmp_path):
    said = []
    result = fit_run(TinyMean(), f"folder:normal={normal_folder}", tmp_path / "run", _engine(), say=said.append)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["validation"]["automatic"] and report["validation"]["images"] == 2
    assert report["validation"]["val_split"] == "from_train:0.2" == report["val_split"]
    assert report["images"]["train"] == 8  # the held-out images were not fitted on
    assert report["calibration"]["image_threshold_rule"] == "quantile"
    assert report["calibration"]["pixel_threshold_rule"] == "quantile"
    assert report["post_processing"]["image_threshold"] is not None
    line = [message for message in said if "held out" in message]
    assert line == [
        (
            "no validation images: held out 2 of 10 training images (seeded, 20%) for thresholds by the "
            "0.99 quantile of their scores (--val-split from_train:F or synthetic:F to choose otherwise)"
        )
    ]
    assert result.metrics is None  # still no test data: no metrics


def test_the_same_seed_holds_out_the_same_images(normal_folder, tmp_path):
    reports = []
    for name, seed in (("a", 0), ("b", 0), ("c", 5)):
        engine = _engine()
        engine.seed = seed
        fit_run(TinyMean(), f"folder:normal={normal_folder}", tmp_path / name, engine, say=lambda m: None)
        reports.append(json.loads((tmp_path / name / "report.json").read_text())["calibration"]["image_threshold"])
    assert reports[0] == reports[1]
    assert reports[0] != reports[2]  # another seed, other held-out images, another threshold


def test_explicit_choices_are_kept(normal_folder, tmp_path):
    fit_run(
        TinyMean(), f"folder:normal={normal_folder}", tmp_path / "none", _engine(), val_split="none", say=lambda m: None
    )
    report = json.loads((tmp_path / "none" / "report.json").read_text())
    assert "validation" not in report and report["post_processing"]["image_threshold"] is None
    fit_run(
        TinyMean(),
        f"folder:normal={normal_folder}",
        tmp_path / "syn",
        _engine(),
        val_split="synthetic:0.4",
        say=lambda m: None,
    )
    report = json.loads((tmp_path / "syn" / "report.json").read_text())
    assert "validation" not in report and report["calibration"]["image_threshold_rule"] == "f1"


def test_a_single_image_cannot_spare_one_and_says_so(tmp_path):
    folder = tmp_path / "one"
    save_png(folder / "0.png", normal_image(0))
    said = []
    fit_run(TinyMean(), f"folder:normal={folder}", tmp_path / "run", _engine(), say=said.append)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["validation"]["images"] == 0 and "no thresholds" in report["validation"]["message"]
    assert any("no thresholds" in message for message in said)


def test_cli_fit_then_predict_prints_verdicts_and_writes_heatmaps(normal_folder, tmp_path, tiny_registry, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "fit",
                "--model",
                "tiny-mean",
                "--data",
                f"folder:normal={normal_folder}",
                "--output",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "held out 2 of 10 training images" in capsys.readouterr().err
    inputs = tmp_path / "new"
    save_png(inputs / "a_ok.png", normal_image(77))
    save_png(inputs / "b_defect.png", anomalous_image(3)[0])
    pred = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(run / "model.safetensors"),
                str(inputs),
                "--output",
                str(pred),
                "--no-progress",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("normal") and lines[1].endswith("ANOMALOUS")
    assert len(list((pred / "heatmaps").glob("*.png"))) == 2
