"""predict --save-masks --save-maps: masks, maps and regions at each image's own resolution."""

import csv
import json

import numpy as np
import pytest
import torch
from adcore import DetectorOutput
from adcore.cli import main
from adcore.data import ImageRecord
from adcore.engine import Engine
from adcore.regions import find_regions
from adcore.run import fit_run, predict_run
from helpers import anomalous_image, make_mvtec, normal_image, save_png
from PIL import Image
from tiny_detectors import TinyMean


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = make_mvtec(tmp_path_factory.mktemp("fr") / "category")
    output = tmp_path_factory.mktemp("fr-run") / "run"
    engine = Engine(device="cpu", progress=False, log=lambda message: None)
    fit_run(TinyMean(), f"mvtec:{root}", output, engine, heatmaps=0, say=lambda message: None)
    return output / "model.safetensors"


@pytest.fixture
def images(tmp_path):
    """Images of three shapes: square, wide (1:2.5, like KolektorSDD on its side), tall."""
    folder = tmp_path / "inputs"
    defect, _ = anomalous_image(7, size=96)
    save_png(folder / "a_square.png", defect)
    save_png(
        folder / "b_wide.png", np.concatenate([normal_image(400, 96)[:40], normal_image(401, 96)[:40]], axis=1)[:, :100]
    )
    tall = np.concatenate([defect, normal_image(402, 96), normal_image(403, 96)[:48]], axis=0)  # 240 x 96
    save_png(folder / "c_tall.png", tall)
    return folder


def _predict(checkpoint, *args):
    return main(["predict", "--checkpoint", str(checkpoint), "--no-progress", "--batch-size", "1", *map(str, args)])


def test_masks_maps_and_regions_are_written_at_each_images_size(checkpoint, images, tmp_path, tiny_registry):
    from adcore.checkpoint import load_checkpoint

    out = tmp_path / "pred"
    assert _predict(checkpoint, images, "--output", out, "--format", "json", "--save-masks", "--save-maps") == 0
    rows = json.loads((out / "predictions.json").read_text())
    detector, _ = load_checkpoint(checkpoint)
    threshold = float(detector.post_processor.pixel_threshold)
    for index, row in enumerate(rows):
        path = row["path"]
        with Image.open(path) as original:
            width, height = original.size
        stem = f"{index:04d}_{path.rsplit('/', 1)[-1][:-4]}"
        values = np.load(out / "maps" / f"{stem}.npy")
        assert values.shape == (height, width) and values.dtype == np.float32
        assert (row["width"], row["height"]) == (width, height)
        with Image.open(out / "masks" / f"{stem}.png") as mask_image:
            mask = np.asarray(mask_image)
        assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, values.astype(np.float64) >= threshold)
        # The same image through predict_image: the same map at the same size, the same regions.
        single = detector.predict_image(path)
        np.testing.assert_array_equal(single.anomaly_map, values)
        assert row["regions"] == json.loads(json.dumps(single.regions))
        assert row["regions"] == find_regions(values, threshold)
        for region in row["regions"]:
            assert 0 <= region["x0"] < region["x1"] <= width and 0 <= region["y0"] < region["y1"] <= height
            inside = mask[region["y0"] : region["y1"], region["x0"] : region["x1"]] == 255
            assert 0 < region["area"] <= inside.sum()
            crop = values[region["y0"] : region["y1"], region["x0"] : region["x1"]]
            assert region["peak_score"] == pytest.approx(float(crop.max()), rel=1e-6)
    by_name = {row["path"].rsplit("/", 1)[-1]: row for row in rows}
    assert by_name["a_square.png"]["regions"] and by_name["c_tall.png"]["regions"]  # the white squares
    top = by_name["c_tall.png"]["regions"][0]
    assert top["y1"] <= 110  # the defect is in the top third of the tall image, found there


def test_csv_holds_regions_as_json_text_and_heatmaps_keep_the_aspect_ratio(checkpoint, images, tmp_path, tiny_registry):
    out = tmp_path / "pred"
    assert _predict(checkpoint, images, "--output", out, "--save-masks", "--heatmaps", "3") == 0
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert all(isinstance(json.loads(row["regions"]), list) for row in rows)
    assert not (out / "maps").exists()
    for name, (width, height) in {"0000_a_square": (64, 64), "0001_b_wide": (64, 26), "0002_c_tall": (26, 64)}.items():
        with Image.open(out / "heatmaps" / f"{name}.png") as panel:
            assert panel.size == (3 * width, height + 22), name  # not squashed to the 64 x 64 input


def test_without_the_flags_the_table_is_as_before(checkpoint, images, tmp_path, tiny_registry):
    out = tmp_path / "pred"
    assert _predict(checkpoint, images, "--output", out) == 0
    with open(out / "predictions.csv", newline="") as handle:
        assert next(csv.DictReader(handle)).keys() == {"path", "score", "normalized_score", "is_anomalous"}
    assert not (out / "masks").exists() and not (out / "maps").exists()


class BoxDetector(TinyMean):
    """TinyMean that also reports one region per image, in input pixels (a region-scoring method)."""

    name = "tiny-boxes"

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        output = super().forward(images)
        box = torch.tensor([[8.0, 16.0, 32.0, 48.0, 7.5]])
        return DetectorOutput(output.pred_score, output.anomaly_map, [box] * images.shape[0])


def test_detector_regions_are_scaled_to_the_images_own_pixels(tmp_path):
    detector = BoxDetector()
    engine = Engine(device="cpu", progress=False, log=lambda message: None)
    records = [ImageRecord(p) for p in [save_png(tmp_path / f"n{i}.png", normal_image(i)) for i in range(3)]]
    from adcore.data import AnomalyDataset

    engine.fit(detector, AnomalyDataset(records, detector.input_spec))
    engine.calibrate(detector, engine.predict(detector, AnomalyDataset(records, detector.input_spec)))
    wide = save_png(tmp_path / "wide.png", np.concatenate([normal_image(9, 64)] * 4, axis=1)[:32])  # 256 x 32
    result = predict_run(detector, [ImageRecord(wide)], tmp_path / "out", engine, save_maps=True, heatmaps=0)
    (region,) = result.rows[0]["regions"]
    # x scales by 256 / 64 = 4, y by 32 / 64 = 0.5
    assert (region["x0"], region["y0"], region["x1"], region["y1"]) == (32.0, 8.0, 128.0, 24.0)
    assert region["source"] == "detector" and region["peak_score"] == 7.5 and region["area"] == 96.0 * 16.0
    tiled = predict_run(detector, [ImageRecord(wide)], tmp_path / "out2", engine, tile=64, heatmaps=0)
    assert len(tiled.rows[0]["regions"]) == 4  # one per tile, each in the tile's place
    assert sorted(r["x0"] for r in tiled.rows[0]["regions"]) == [8.0, 72.0, 136.0, 200.0]
