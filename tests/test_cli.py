"""The ``adcore`` command line on a tiny synthetic MVTec category (64 px, real PaDiM)."""

import csv
import json

import pytest
from adcore.cli import main
from adcore.plugins import set_registry
from helpers import anomalous_image, make_mvtec, normal_image, save_png, single_thread
from PIL import Image

N_TEST = 8


@pytest.fixture(scope="session")
def padim_run(tmp_path_factory):
    """One PaDiM fit through the CLI, shared by the tests that only read its outputs."""
    root = make_mvtec(tmp_path_factory.mktemp("cli-data") / "category")
    output = tmp_path_factory.mktemp("cli-run") / "padim"
    set_registry(None)
    with single_thread():
        code = main(
            [
                "fit",
                "--model",
                "padim",
                "--data",
                f"mvtec:{root}",
                "--output",
                str(output),
                "--image-size",
                "64",
                "--no-progress",
            ]
        )
    set_registry(None)
    assert code == 0
    return root, output


@pytest.fixture
def images(tmp_path):
    """A folder to predict on: 3 normal images, then 2 with a bright square."""
    folder = tmp_path / "inputs"
    for i in range(3):
        save_png(folder / f"a_normal_{i}.png", normal_image(300 + i))
    for i in range(2):
        save_png(folder / f"b_defect_{i}.png", anomalous_image(50 + i)[0])
    return folder


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _predict(checkpoint, *args):
    return main(["predict", "--checkpoint", str(checkpoint), "--no-progress", *map(str, args)])


def test_list_plugins_json(capsys):
    assert main(["list-plugins", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    plugins = {p["name"]: p for p in listing["plugins"]}
    assert {"padim", "stfpm", "weights-efficientnet-lite"} <= set(plugins)
    assert all(plugins[name]["error"] is None for name in ("padim", "stfpm", "weights-efficientnet-lite"))
    assert plugins["padim"]["detectors"] == ["padim"]
    assert plugins["stfpm"]["detectors"] == ["stfpm"]
    assert plugins["weights-efficientnet-lite"]["resource_providers"] == ["efficientnet-lite"]
    assert plugins["padim"]["distribution"] == "adcore-padim" and plugins["padim"]["version"] == "0.1.0"
    assert listing["detector_clashes"] == {}


def test_list_plugins_table_and_plugin_selection(capsys):
    assert main(["--plugins", "padim", "list-plugins"]) == 0
    out = capsys.readouterr().out
    assert "detector padim" in out and "stfpm" not in out


def test_fit_writes_every_output(padim_run):
    _, output = padim_run
    assert (output / "model.safetensors").is_file()
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["model"] == "padim" and metrics["data"] == "mvtec:category"
    assert metrics["image_auroc"] == pytest.approx(1.0)  # bright squares on smooth textures
    assert metrics["pixel_auroc"] > 0.9
    report = json.loads((output / "report.json").read_text())
    assert report["weights_sources"] == {"feature_extractor": "provider:efficientnet-lite"}
    assert report["calibration"]["image_threshold_rule"] == "f1"
    assert report["post_processing"]["image_threshold"] is not None
    assert report["metrics"]["image_auroc"] == metrics["image_auroc"]

    rows = _rows(output / "predictions.csv")
    assert len(rows) == N_TEST
    assert [row["label"] for row in rows] == ["0"] * 4 + ["1"] * 4
    assert [row["is_anomalous"] for row in rows] == ["False"] * 4 + ["True"] * 4


def test_fit_writes_a_heatmap_per_test_image(padim_run):
    _, output = padim_run
    panels = sorted((output / "heatmaps").glob("*.png"))
    # 8 test images, default limit 50: every image gets its panel, defects included.
    assert len(panels) == N_TEST
    assert sum("scratch" in p.name for p in panels) == 4
    with Image.open(panels[-1]) as panel:
        assert panel.size == (3 * 64, 64 + 22)  # image | overlay | outline, under a banner


def test_test_command_reproduces_the_metrics(padim_run, tmp_path, capsys):
    _, output = padim_run
    assert (
        main(["test", "--checkpoint", str(output / "model.safetensors"), "--output", str(tmp_path), "--no-progress"])
        == 0
    )
    fitted = json.loads((output / "metrics.json").read_text())
    retested = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max"):
        assert retested[key] == fitted[key], key
    assert "image_auroc" in capsys.readouterr().out


def test_test_command_re_splits_like_fit(shared_mvtec, tmp_path):
    # With validation images taken out of the test set, `test` must score the same images
    # `fit` did (not the calibration ones too), so its metrics match.
    with single_thread():
        assert (
            main(
                [
                    "fit",
                    "--model",
                    "padim",
                    "--data",
                    f"mvtec:{shared_mvtec}",
                    "--output",
                    str(tmp_path / "fit"),
                    "--image-size",
                    "64",
                    "--val-split",
                    "from_test:0.5",
                    "--heatmaps",
                    "0",
                    "--no-progress",
                ]
            )
            == 0
        )
        assert (
            main(
                [
                    "test",
                    "--checkpoint",
                    str(tmp_path / "fit" / "model.safetensors"),
                    "--output",
                    str(tmp_path / "test"),
                    "--heatmaps",
                    "0",
                    "--no-progress",
                ]
            )
            == 0
        )
    fitted = _rows(tmp_path / "fit" / "predictions.csv")
    retested = _rows(tmp_path / "test" / "predictions.csv")
    assert len(fitted) == 4 and [r["path"] for r in retested] == [r["path"] for r in fitted]
    assert [r["score"] for r in retested] == [r["score"] for r in fitted]


def test_predict_a_folder(padim_run, images, tmp_path, capsys):
    _, output = padim_run
    out = tmp_path / "out"
    assert _predict(output / "model.safetensors", images, "--output", out) == 0
    rows = _rows(out / "predictions.csv")
    assert [row["path"] for row in rows] == [str(p) for p in sorted(images.glob("*.png"))]
    assert [row["is_anomalous"] for row in rows] == ["False", "False", "False", "True", "True"]
    normalized = [float(row["normalized_score"]) for row in rows]
    assert all(0 <= v <= 1 for v in normalized)
    assert max(normalized[:3]) < 0.5 <= min(normalized[3:])
    assert len(list((out / "heatmaps").glob("*.png"))) == 5
    assert "ANOMALOUS" in capsys.readouterr().out


def test_predict_limits_heatmaps_spread_over_the_inputs(padim_run, images, tmp_path):
    _, output = padim_run
    assert _predict(output / "model.safetensors", images, "--output", tmp_path, "--heatmaps", "2") == 0
    names = sorted(p.name for p in (tmp_path / "heatmaps").glob("*.png"))
    assert names == ["0000_a_normal_0.png", "0004_b_defect_1.png"]  # first and last


def test_predict_json_format(padim_run, images, tmp_path):
    _, output = padim_run
    assert (
        _predict(output / "model.safetensors", images, "--output", tmp_path, "--format", "json", "--heatmaps", "0") == 0
    )
    rows = json.loads((tmp_path / "predictions.json").read_text())
    assert len(rows) == 5 and rows[3]["is_anomalous"] is True


def test_corrupt_image_fails_cleanly_and_keeps_earlier_results(padim_run, images, tmp_path, capsys):
    _, output = padim_run
    out = tmp_path / "out"
    assert _predict(output / "model.safetensors", images, "--output", out, "--heatmaps", "0") == 0
    before = (out / "predictions.csv").read_bytes()
    corrupt = images / "c_corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    capsys.readouterr()
    assert _predict(output / "model.safetensors", images, "--output", out, "--heatmaps", "0") == 2
    err = capsys.readouterr().err
    assert err.startswith("adcore: error:") and str(corrupt) in err
    assert (out / "predictions.csv").read_bytes() == before
    assert [p.name for p in out.iterdir()] == ["predictions.csv"]  # no temp files


def test_unknown_model_lists_the_installed_ones(shared_mvtec, tmp_path, capsys):
    code = main(["fit", "--model", "nosuch", "--data", f"mvtec:{shared_mvtec}", "--output", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown detector 'nosuch'" in err and "padim" in err and "stfpm" in err
    assert not (tmp_path / "model.safetensors").exists()


def test_missing_data_and_checkpoint_are_user_errors(tmp_path, capsys):
    assert main(["fit", "--model", "padim", "--data", f"mvtec:{tmp_path / 'none'}", "--output", str(tmp_path)]) == 2
    assert "not an MVTec AD category" in capsys.readouterr().err
    assert _predict(tmp_path / "missing.safetensors", tmp_path) == 2
    assert str(tmp_path / "missing.safetensors") in capsys.readouterr().err


def test_manual_image_threshold_changes_the_verdicts(padim_run, images, tmp_path):
    _, output = padim_run
    checkpoint = output / "model.safetensors"
    verdicts = {}
    for name, threshold in (("learned", None), ("high", "1e9"), ("low", "-1e9")):
        extra = [] if threshold is None else [f"--image-threshold={threshold}"]
        assert _predict(checkpoint, images, "--output", tmp_path / name, "--heatmaps", "0", *extra) == 0
        verdicts[name] = [row["is_anomalous"] for row in _rows(tmp_path / name / "predictions.csv")]
    assert verdicts["learned"] == ["False", "False", "False", "True", "True"]
    assert verdicts["high"] == ["False"] * 5
    assert verdicts["low"] == ["True"] * 5
    high = _rows(tmp_path / "high" / "predictions.csv")
    assert all(float(row["normalized_score"]) == 0.0 for row in high)


def test_fit_with_a_manual_threshold_stores_it(shared_mvtec, tmp_path):
    with single_thread():
        code = main(
            [
                "fit",
                "--model",
                "padim",
                "--data",
                f"mvtec:{shared_mvtec}",
                "--output",
                str(tmp_path),
                "--image-size",
                "64",
                "--image-threshold",
                "1e9",
                "--heatmaps",
                "0",
                "--no-progress",
            ]
        )
    assert code == 0
    assert all(row["is_anomalous"] == "False" for row in _rows(tmp_path / "predictions.csv"))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["post_processing"]["image_threshold"] == 1e9


def test_same_seed_same_scores_through_the_cli(shared_mvtec, tmp_path):
    # STFPM's student is randomly initialised when the detector is built: the CLI's --seed
    # must cover that too, not only the training loop.
    scores = []
    for run in ("a", "b"):
        code = main(
            [
                "fit",
                "--model",
                "stfpm",
                "--data",
                f"mvtec:{shared_mvtec}",
                "--output",
                str(tmp_path / run),
                "--image-size",
                "64",
                "--epochs",
                "1",
                "--heatmaps",
                "0",
                "--seed",
                "3",
                "--no-progress",
            ]
        )
        assert code == 0
        scores.append([row["score"] for row in _rows(tmp_path / run / "predictions.csv")])
    assert scores[0] == scores[1]


def test_gradient_fit_writes_a_loss_curve_png(shared_mvtec, tmp_path, tiny_registry):
    output = tmp_path / "grad"
    code = main(
        [
            "fit",
            "--model",
            "tiny-grad",
            "--data",
            f"mvtec:{shared_mvtec}",
            "--output",
            str(output),
            "--epochs",
            "3",
            "--validate-every",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0
    history = json.loads((output / "report.json").read_text())["history"]
    assert [record["epoch"] for record in history] == [1, 2, 3]
    with Image.open(output / "loss_curve.png") as image:
        assert image.format == "PNG" and image.size[0] > 300
        pixels = image.convert("RGB").getcolors(1 << 20)
    assert len(pixels) > 20  # a drawn plot, not a blank canvas


def test_one_pass_fit_writes_no_loss_curve(padim_run):
    assert not (padim_run[1] / "loss_curve.png").exists()


def test_loader_workers_decode_in_other_processes_with_the_same_scores(padim_run, tmp_path, capsys):
    root, output = padim_run
    with single_thread():
        code = main(
            ["fit", "--model", "padim", "--data", f"mvtec:{root}", "--output", str(tmp_path / "workers")]
            + ["--image-size", "64", "--no-progress", "--loader-workers", "2"]
        )
    assert code == 0
    expected = [(row["path"], row["score"]) for row in _rows(output / "predictions.csv")]
    assert [(row["path"], row["score"]) for row in _rows(tmp_path / "workers" / "predictions.csv")] == expected
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["fit", "--model", "padim", "--data", f"mvtec:{root}", "--output", str(tmp_path / "x"), "--loader-workers", "-1"])
    assert "--loader-workers: '-1' is not a whole number >= 0" in capsys.readouterr().err
