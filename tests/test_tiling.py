"""Tiles: coverage, exact equality of one whole-image tile with the untiled path, averaging, max score."""

import numpy as np
import pytest
import torch
from adcore import AnomalyDetector, DetectorOutput, InputSpec
from adcore.data import AnomalyDataset, ImageRecord, load_data
from adcore.engine import Engine
from adcore.frames import to_rgb_image
from adcore.run import evaluate_run, predict_run, score_dataset
from adcore.tiling import score_image, tile_boxes
from helpers import anomalous_image, make_mvtec, save_png
from tiny_detectors import TinyMean


class Brightness(AnomalyDetector):
    """Map = each input's mean normalised brightness, constant over the input (checks stitching)."""

    name = "brightness"

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec((16, 16), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    @property
    def needs_fit(self) -> bool:
        return False

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        value = images.mean(dim=(1, 2, 3))
        return DetectorOutput.from_map(value.view(-1, 1, 1, 1).expand(-1, 1, *images.shape[-2:]).contiguous())


def test_tile_boxes_cover_the_image_and_end_at_the_border():
    boxes = tile_boxes(100, 60, 40, 30)
    xs = sorted({b[0] for b in boxes})
    ys = sorted({b[1] for b in boxes})
    assert xs == [0, 30, 60] and ys == [0, 20]  # the last tile moves to end at 100 and 60
    covered = np.zeros((60, 100), int)
    for x0, y0, x1, y1 in boxes:
        assert (x1 - x0, y1 - y0) == (40, 40)
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    assert tile_boxes(50, 30, 64) == [(0, 0, 50, 30)]  # a tile larger than the image is the image
    assert tile_boxes(64, 64, 32) == [(0, 0, 32, 32), (32, 0, 64, 32), (0, 32, 32, 64), (32, 32, 64, 64)]
    with pytest.raises(ValueError, match="exceeds the tile size"):
        tile_boxes(100, 100, 20, 30)
    with pytest.raises(ValueError, match="positive"):
        tile_boxes(100, 100, 0)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = make_mvtec(tmp_path_factory.mktemp("tiles") / "category")
    detector = TinyMean()
    engine = Engine(device="cpu", progress=False, log=lambda message: None)
    splits = load_data(f"mvtec:{root}")
    engine.fit(detector, AnomalyDataset(splits.train, detector.input_spec))
    engine.calibrate(
        detector, engine.predict(detector, AnomalyDataset(splits.test, detector.input_spec, has_masks=True))
    )
    return detector, root


@pytest.mark.parametrize("tile", [96, 150, 500])
def test_one_tile_equal_to_the_image_is_the_untiled_result_exactly(fitted, tile, tmp_path):
    detector, _ = fitted
    image, _ = anomalous_image(1, size=96)
    if tile == 150:  # not square: the tile covers a 150 x 96 image only when clipped to it
        image = np.concatenate([image, image[:, :54]], axis=1)
    pil = to_rgb_image(image)
    whole = score_image(detector, pil)
    tiled = score_image(detector, pil, tile=tile)
    assert tiled.tiles == 1 or tile == 96 and tiled.tiles == 1
    assert tiled.score == whole.score
    assert torch.equal(tiled.full_map, whole.full_map) and torch.equal(tiled.model_map, whole.model_map)
    a, b = detector.predict_image(image), detector.predict_image(image, tile=tile, tile_stride=tile // 2)
    assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map) and a.regions == b.regions


def test_overlaps_are_averaged_and_the_score_is_the_max_over_tiles():
    detector = Brightness()
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, 20:] = 255  # left half black, right half white
    scored = score_image(detector, to_rgb_image(image), tile=20, stride=10)  # tiles at x = 0, 10, 20
    values = scored.full_map
    assert scored.tiles == 3 and values.shape == (20, 40)
    # x in 0..9: only tile 0 (mean 0); x in 10..19: tiles 0 and 1 (0 and 0.5); 20..29: tiles 1, 2 (0.5, 1); 30..: tile 2
    assert torch.allclose(values[:, :10], torch.tensor(0.0))
    assert torch.allclose(values[:, 10:20], torch.tensor(0.25))
    assert torch.allclose(values[:, 20:30], torch.tensor(0.75))
    assert torch.allclose(values[:, 30:], torch.tensor(1.0))
    assert scored.score == pytest.approx(1.0)
    assert scored.model_map.shape == (16, 16)


def test_tiling_finds_a_small_defect_that_resizing_washes_out(fitted, tmp_path):
    """A 64-pixel model, a 256-pixel image made of normal textures with one small bright spot."""
    detector, _ = fitted
    from helpers import normal_image

    big = np.concatenate(
        [np.concatenate([normal_image(200 + 2 * r + c) for c in range(4)], axis=1) for r in range(4)], axis=0
    )
    normal_score_tiled = score_image(detector, to_rgb_image(big), tile=64).score
    big[148:164, 88:104] = 255  # a 16-pixel defect: 4 pixels (one pooling cell) after resizing to 64
    defect_tiled = score_image(detector, to_rgb_image(big), tile=64)
    defect_plain = score_image(detector, to_rgb_image(big))
    assert defect_tiled.score > normal_score_tiled
    peak = np.unravel_index(int(torch.argmax(defect_tiled.full_map)), (256, 256))
    assert 140 <= peak[0] <= 165 and 80 <= peak[1] <= 105  # the map points at the defect
    threshold = float(detector.post_processor.image_threshold)
    assert defect_tiled.score >= threshold > defect_plain.score


def test_tiled_test_and_predict_runs(fitted, tmp_path, tiny_registry):
    detector, root = fitted
    from adcore.checkpoint import save_checkpoint

    checkpoint = save_checkpoint(detector, tmp_path / "model.safetensors", extra={"run": {"data": f"mvtec:{root}"}})
    engine = Engine(device="cpu", progress=False, batch_size=3, log=lambda message: None)
    plain = evaluate_run(checkpoint, engine=engine)
    tiled = evaluate_run(checkpoint, engine=engine, tile=64)  # one tile per 64-pixel image
    assert torch.equal(plain.predictions.scores, tiled.predictions.scores)
    assert torch.equal(plain.predictions.maps, tiled.predictions.maps)
    assert tiled.metrics["image_auroc"] == plain.metrics["image_auroc"] and tiled.metrics["tile"] == 64
    quartered = evaluate_run(checkpoint, engine=engine, tile=32, tile_stride=16)
    assert quartered.predictions.maps.shape == plain.predictions.maps.shape
    assert not torch.equal(quartered.predictions.scores, plain.predictions.scores)
    records = [ImageRecord(p) for p in sorted((root / "test").rglob("*.png"))]
    result = predict_run(detector, records, tmp_path / "pred", engine, tile=32, tile_stride=16, heatmaps=2)
    assert all({"width", "height", "regions"} <= set(row) for row in result.rows)
    assert result.heatmaps == 2


def test_bad_tiling_options_are_refused_before_work(fitted, tmp_path):
    detector, root = fitted
    records = [ImageRecord(p) for p in sorted((root / "test" / "good").glob("*.png"))]
    with pytest.raises(ValueError, match="exceeds the tile size"):
        predict_run(detector, records, tmp_path / "out", tile=16, tile_stride=32)
    with pytest.raises(ValueError, match="needs --tile"):
        predict_run(detector, records, tmp_path / "out", tile_stride=32)
    assert not (tmp_path / "out").exists()
    dataset = AnomalyDataset(records, detector.input_spec)
    engine = Engine(device="cpu", progress=False)
    assert torch.equal(score_dataset(engine, detector, dataset).scores, engine.predict(detector, dataset).scores)


def test_tile_dataset_gives_each_tile_as_score_image_sees_it(tmp_path):
    from adcore.frames import model_input
    from adcore.tiling import TileDataset

    paths = [save_png(tmp_path / f"{i}.png", anomalous_image(i, size=96)[0]) for i in range(2)]
    spec = InputSpec((32, 32))
    dataset = TileDataset([ImageRecord(p) for p in paths], spec, size=64, stride=32)
    assert len(dataset) == 2 * 4  # x, y in (0, 32) for a 96-pixel image
    keys = [dataset[i]["path"] for i in range(len(dataset))]
    assert len(set(keys)) == len(keys) and keys[1] == f"{paths[0]}#32,0"  # tiles never share a cache key
    image = to_rgb_image(paths[1])
    _, box = dataset.tiles[5]
    assert torch.equal(dataset.raw(5)[0], model_input(image.crop(box), (32, 32)))
    assert torch.equal(dataset[5]["image"], spec.normalize(model_input(image.crop(box), (32, 32))))


def test_fit_on_tiles_then_test_and_predict_use_the_tiles(tmp_path, tiny_registry, capsys):
    import json

    from adcore.cli import main

    root = make_mvtec(tmp_path / "big", n_train=6, n_good=3, n_bad=3, size=128)
    run = tmp_path / "run"
    assert (
        main(
            [
                "fit",
                "--model",
                "tiny-mean",
                "--data",
                f"mvtec:{root}",
                "--output",
                str(run),
                "--tile",
                "64",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "24 training tiles of 64 px, every 64 px" in capsys.readouterr().err
    report = json.loads((run / "report.json").read_text())
    assert report["images"]["train"] == 24 and report["tile"] == 64 and report["tile_stride"] == 64
    metrics = json.loads((run / "metrics.json").read_text())
    engine = Engine(device="cpu", progress=False)
    again = evaluate_run(run / "model.safetensors", engine=engine)  # the checkpoint's tiling by default
    assert again.metrics["tile"] == 64 and again.metrics["image_auroc"] == metrics["image_auroc"]
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(run / "model.safetensors"),
                str(root / "test" / "scratch"),
                "--output",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "fitted on tiles: --tile 64 --tile-stride 64" in captured.err
    assert captured.out.count("ANOMALOUS") == 3 and "region(s)" in captured.out


def test_tiles_and_synthetic_validation_do_not_mix(fitted, tmp_path):
    from adcore.run import fit_run

    _, root = fitted
    with pytest.raises(ValueError, match="synthetic validation anomalies"):
        fit_run(TinyMean(), f"mvtec:{root}", tmp_path / "x", tile=32, val_split="synthetic:0.3", say=lambda m: None)
