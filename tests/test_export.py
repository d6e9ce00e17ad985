"""Export (ONNX, OpenVINO, TorchScript) and the light runtime, on tiny synthetic data.

The exported graph takes RGB 0..1 at the input size (normalisation inside), returns raw and
calibrated outputs, and carries its metadata inside the file. The runtime (adcore_runtime)
preprocesses images exactly as adcore's dataset and scores them like ``adcore predict``.
End-to-end checks on real models and the real bottle data are in tests/e2e/test_export_bottle.py.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from adcore.checkpoint import save_checkpoint
from adcore.cli import main
from adcore.data import AnomalyDataset, load_data
from adcore.data.dataset import ImageRecord
from adcore.engine import Engine
from adcore.export import ExportError, export_detector, read_export_metadata
from helpers import anomalous_image, make_mvtec, normal_image, save_png, single_thread
from PIL import Image
from tiny_detectors import TinyMean

pytest.importorskip("onnx", reason="export extras not installed: pip install 'adcore[export]'")
ort = pytest.importorskip("onnxruntime")
ov = pytest.importorskip("openvino")
adcore_runtime = pytest.importorskip("adcore_runtime")

SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "torchscript": ".pt"}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A calibrated TinyMean (image and pixel thresholds), its test set and a checkpoint."""
    root = make_mvtec(tmp_path_factory.mktemp("export-data") / "category")
    detector = TinyMean(pool=8)
    splits = load_data(f"mvtec:{root}")
    test = AnomalyDataset(splits.test, detector.input_spec, has_masks=True)
    with single_thread():
        Engine(device="cpu", progress=False, batch_size=8).fit(
            detector, AnomalyDataset(splits.train, detector.input_spec), test
        )
    assert detector.post_processor.is_calibrated
    return detector, test, root


@pytest.fixture(scope="module")
def exported(fitted, tmp_path_factory):
    """The detector exported once to each format (tracing is the slow part)."""
    detector, _, _ = fitted
    folder = tmp_path_factory.mktemp("exported")
    with single_thread():
        results = {"onnx": export_detector(detector, "onnx", folder / "m.onnx")}
        results["openvino"] = export_detector(detector, "openvino", folder / "m.xml", onnx_file=folder / "m.onnx")
        results["torchscript"] = export_detector(detector, "torchscript", folder / "m.pt")
    return results


def _eager(detector, test):
    """Raw pixels 0..1 of the test set and what eager PyTorch (predict + post-processor) says."""
    pixels = torch.stack([test.raw(i)[0] for i in range(len(test))]).float() / 255.0
    with torch.no_grad():
        out = detector.predict(torch.stack([test[i]["image"] for i in range(len(test))]))
    post = detector.post_processor
    return pixels, {
        "pred_score": out.pred_score,
        "normalized_score": post.normalize_scores(out.pred_score),
        "anomaly_map": out.anomaly_map,
        "normalized_map": post.normalize_maps(out.anomaly_map),
    }


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "torchscript"])
def test_exported_graph_equals_eager_with_normalisation_inside(fitted, exported, fmt):
    detector, test, _ = fitted
    pixels, eager = _eager(detector, test)
    model = adcore_runtime.load(exported[fmt].path)
    outputs = model.run(pixels.numpy())  # RGB 0..1, not normalised: the graph applies mean/std
    assert list(outputs) == ["pred_score", "normalized_score", "anomaly_map", "normalized_map"]
    for name, reference in eager.items():
        got = torch.from_numpy(np.asarray(outputs[name])).reshape(reference.shape)
        scale = 1.0 if name.startswith("normalized") else max(1.0, float(reference.abs().max()))
        assert float((got - reference).abs().max()) <= 1e-4 * scale, name
    # the self-check ran the file with its own runtime on random images
    assert exported[fmt].check is not None and max(exported[fmt].check.values()) <= 1e-4


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "torchscript"])
def test_metadata_travels_inside_the_file(fitted, exported, fmt):
    detector, _, _ = fitted
    path = exported[fmt].path
    assert [p.name for p in path.parent.iterdir() if p.suffix == ".json"] == []  # no side file
    meta = read_export_metadata(path)
    post = detector.post_processor.summary()
    assert meta["detector"] == "tiny-mean" and meta["file_format"] == fmt
    assert meta["input"]["image_size"] == [64, 64]
    assert meta["input"]["mean"] == pytest.approx(detector.input_spec.mean)
    assert meta["input"]["std"] == pytest.approx(detector.input_spec.std)
    assert meta["input"]["batch"] == "dynamic"
    for key in ("image_threshold", "pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max"):
        assert meta["post_processing"][key] == post[key], key  # exact: JSON keeps float64
    assert meta["config"] == {"image_size": [64, 64], "pool": 8}
    assert meta["adcore_version"]


def test_onnx_metadata_is_in_metadata_props_and_openvino_in_rt_info(exported):
    import onnx

    props = {p.key: p.value for p in onnx.load(str(exported["onnx"].path)).metadata_props}
    assert json.loads(props["adcore"])["detector"] == "tiny-mean"
    model = ov.Core().read_model(str(exported["openvino"].path))
    assert json.loads(model.get_rt_info(["adcore"]).astype(str))["file_format"] == "openvino"
    assert exported["openvino"].path.with_suffix(".bin").is_file()


def test_exported_file_scores_any_batch_size(fitted, exported):
    detector, test, _ = fitted
    pixels, eager = _eager(detector, test)
    model = adcore_runtime.load(exported["onnx"].path)
    for n in (1, 3):
        scores = model.run(pixels[:n].numpy())["pred_score"]
        assert np.allclose(scores, eager["pred_score"][:n].numpy(), atol=1e-5)


class _Declared(TinyMean):
    name = "tiny-declared"
    export_unsupported = "its memory bank is searched with a library call outside torch"


class _Untraceable(TinyMean):
    name = "tiny-untraceable"

    def forward(self, images):
        # leaves torch: neither torch.export nor the tracer can follow numpy
        from adcore import DetectorOutput

        host = np.asarray(images.detach().cpu().numpy()).mean(axis=(1, 2, 3))
        return DetectorOutput(pred_score=torch.from_numpy(host.copy()).float() + self.mean.sum())


def _fit_tiny(detector, root):
    splits = load_data(f"mvtec:{root}")
    with single_thread():
        Engine(device="cpu", progress=False).fit(
            detector,
            AnomalyDataset(splits.train, detector.input_spec),
            AnomalyDataset(splits.test, detector.input_spec),
        )
    return detector


def test_declared_unsupported_detector_says_why_in_one_line(fitted, tmp_path):
    detector = _fit_tiny(_Declared(pool=8), fitted[2])
    with pytest.raises(ExportError) as info:
        export_detector(detector, "onnx", tmp_path / "x.onnx")
    assert "\n" not in str(info.value)
    assert "tiny-declared" in str(info.value) and "memory bank is searched" in str(info.value)
    assert not (tmp_path / "x.onnx").exists()


def test_untraceable_forward_reports_the_tracing_error_in_one_line(fitted, tmp_path):
    detector = _fit_tiny(_Untraceable(pool=8), fitted[2])
    with pytest.raises(ExportError) as info, single_thread():
        export_detector(detector, "onnx", tmp_path / "x.onnx")
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    assert message.startswith("detector 'tiny-untraceable' cannot be exported to onnx: ")


def test_unfitted_detector_is_refused(tmp_path):
    from adcore.detector import NotFittedError

    with pytest.raises(NotFittedError):
        export_detector(TinyMean(), "onnx", tmp_path / "x.onnx")


# -- the runtime: preprocessing exactly as adcore's dataset ----------------------------------
def _odd_images(folder):
    """Files that exercise every decoding rule: RGB, RGBA, grey, palette, 16-bit, EXIF-rotated, odd size."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = normal_image(7, 97)
    paths = [save_png(folder / "rgb.png", rgb) or folder / "rgb.png"]
    rgba = Image.fromarray(rgb).convert("RGBA")
    rgba.putalpha(Image.fromarray((np.arange(97 * 97).reshape(97, 97) % 256).astype(np.uint8)))
    rgba.save(folder / "rgba.png")
    Image.fromarray(rgb).convert("L").save(folder / "grey.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    Image.fromarray((np.arange(50 * 70).reshape(50, 70) * 18).astype(np.uint16)).save(folder / "wide16.png")
    rotated = Image.fromarray(rgb[:, :60])
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° on display
    rotated.save(folder / "exif.jpg", exif=exif.tobytes(), quality=95)
    Image.fromarray(rgb).save(folder / "photo.jpg", quality=80)
    return paths + [folder / n for n in ("rgba.png", "grey.png", "palette.png", "wide16.png", "exif.jpg", "photo.jpg")]


def test_runtime_preprocessing_is_bit_identical_to_the_dataset(tmp_path):
    from adcore.protocols import InputSpec
    from adcore_runtime.images import as_rgb_image, preprocess

    paths = _odd_images(tmp_path / "odd")
    dataset = AnomalyDataset([ImageRecord(p) for p in paths], InputSpec((48, 80)))
    for i, path in enumerate(paths):
        expected = dataset.raw(i)[0].float() / 255.0
        for item in (path, Image.open(path) if path.suffix == ".png" else path):
            got = preprocess(as_rgb_image(item)[0], (48, 80))
            assert got.dtype == np.float32 and got.shape == (3, 48, 80)
            assert np.array_equal(got, expected.numpy()), path.name
    # a uint8 array is an image like any other
    array = np.asarray(Image.open(paths[0]).convert("RGB"))
    assert np.array_equal(preprocess(as_rgb_image(array)[0], (48, 80)), dataset.raw(0)[0].float().numpy() / 255.0)


def test_runtime_refuses_ambiguous_arrays_and_files_without_metadata(tmp_path, exported):
    import onnx

    model = adcore_runtime.load(exported["onnx"].path)
    with pytest.raises(adcore_runtime.ImageError, match="uint8"):
        model.predict(np.zeros((64, 64, 3), dtype=np.float32))
    bare = onnx.load(str(exported["onnx"].path))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(adcore_runtime.ExportFileError, match="no adcore metadata"):
        adcore_runtime.load(tmp_path / "bare.onnx")


# -- end to end through the CLI: export a checkpoint, score like `adcore predict` -------------
@pytest.fixture
def checkpoint(fitted, tmp_path, tiny_registry):
    detector, _, _ = fitted
    return save_checkpoint(detector, tmp_path / "model.safetensors")


def _images(folder):
    for i in range(3):
        save_png(folder / f"a_normal_{i}.png", normal_image(300 + i))
    for i in range(3):
        save_png(folder / f"b_defect_{i}.png", anomalous_image(60 + i)[0])
    return folder


def test_cli_export_then_runtime_matches_adcore_predict(checkpoint, tmp_path, capsys):
    images = _images(tmp_path / "inputs")
    with single_thread():
        assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx"]) == 0
    onnx_path = checkpoint.with_name("model.onnx")
    out = capsys.readouterr().out
    assert str(onnx_path) in out and "largest difference" in out and "(N, 3, 64, 64)" in out
    with single_thread():
        assert (
            main(
                [
                    "predict",
                    "--checkpoint",
                    str(checkpoint),
                    str(images),
                    "--output",
                    str(tmp_path / "p"),
                    "--no-progress",
                ]
            )
            == 0
        )
    with open(tmp_path / "p" / "predictions.csv", newline="") as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    model = adcore_runtime.load(onnx_path)
    predictions = model.predict_batch(sorted(images.iterdir()))
    assert len(predictions) == len(rows) == 6
    verdicts = []
    for p in predictions:
        row = rows[p.path]
        assert p.normalized_score == pytest.approx(float(row["normalized_score"]), abs=1e-4)
        assert p.is_anomalous == (row["is_anomalous"] == "True")
        assert p.mask.shape == p.anomaly_map.shape == (64, 64) and p.mask.dtype == bool
        assert np.array_equal(p.mask, p.anomaly_map >= model.pixel_threshold)
        verdicts.append(p.is_anomalous)
    assert verdicts[:3] == [False] * 3 and any(verdicts[3:])  # both verdicts occur: not a vacuous comparison


def test_cli_export_openvino_and_torchscript_default_names(checkpoint, capsys):
    with single_thread():
        assert main(["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--no-check"]) == 0
        assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript"]) == 0
    assert checkpoint.with_name("model.xml").is_file() and checkpoint.with_name("model.bin").is_file()
    assert checkpoint.with_name("model.torchscript.pt").is_file()
    assert "largest difference" not in capsys.readouterr().out.split("model.torchscript.pt")[0]


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "missing.safetensors"), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adcore: error: ") and err.count("\n") == 1


def test_runtime_command_line(exported, fitted, tmp_path, capsys):
    from adcore_runtime.__main__ import main as runtime_main

    images = _images(tmp_path / "inputs")
    assert runtime_main([str(exported["openvino"].path), str(images), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    onnx_model = adcore_runtime.load(exported["onnx"].path)
    expected = onnx_model.predict_batch(sorted(images.iterdir()))
    assert [r["path"] for r in rows] == [p.path for p in expected]
    assert [r["is_anomalous"] for r in rows] == [p.is_anomalous for p in expected]
    assert [r["normalized_score"] for r in rows] == pytest.approx([p.normalized_score for p in expected], abs=1e-5)
    assert rows[0]["is_anomalous"] is False and any(r["is_anomalous"] for r in rows)
