"""The prediction store: small runs stay in memory unchanged, large ones go to a temporary file
that reads back identically and disappears on close; spilled predictions get binned metrics."""

import gc
import math

import pytest
import torch
from adcore.data import AnomalyDataset, load_data
from adcore.engine import Engine
from adcore.metrics import compute_metrics
from adcore.prediction_store import PredictionStore, StoredArray, default_spill_bytes
from tiny_detectors import TinyMean


def _batches(count=5, size=3, height=8, width=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    for b in range(count):
        yield {
            "paths": [f"image_{b}_{i}.png" for i in range(size)],
            "scores": torch.rand(size, generator=g),
            "maps": torch.rand(size, 1, height, width, generator=g),
            "labels": torch.randint(0, 2, (size,), generator=g),
            "masks": (torch.rand(size, 1, height, width, generator=g) > 0.7).float(),
            "regions": [torch.rand(b % 3, 5, generator=g) for _ in range(size)],
        }


def _filled(spill_bytes, tmp_path=None):
    store = PredictionStore(spill_bytes, directory=tmp_path)
    for batch in _batches():
        store.append(**batch)
    return store


def test_small_runs_stay_in_memory_as_plain_tensors():
    store = _filled(spill_bytes=10**9)
    predictions = store.finish(seconds=2.0)
    assert not store.spilled and not predictions.on_disk
    assert isinstance(predictions.maps, torch.Tensor) and predictions.maps.shape == (15, 1, 8, 6)
    expected = list(_batches())
    assert torch.equal(predictions.maps, torch.cat([b["maps"] for b in expected]))
    assert torch.equal(predictions.masks, torch.cat([b["masks"] for b in expected]))
    assert predictions.images_per_second == pytest.approx(7.5)


@pytest.mark.parametrize("spill_bytes", [0, 1000])  # from the first batch, and after a few batches
def test_spilled_predictions_read_back_identically(tmp_path, spill_bytes):
    memory = _filled(10**9).finish()
    store = _filled(spill_bytes, tmp_path)
    disk = store.finish()
    assert store.spilled and disk.on_disk and store.directory.parent == tmp_path
    assert isinstance(disk.maps, StoredArray) and isinstance(disk.masks, StoredArray)
    assert disk.maps.shape == memory.maps.shape and len(disk.masks) == 15
    assert disk.masks.file_dtype.itemsize == 1  # 0/1 masks are stored as bytes, read back as float32
    assert disk.maps.dtype == torch.float32 and disk.masks.dtype == torch.float32
    assert disk.paths == memory.paths
    assert torch.equal(disk.scores, memory.scores) and torch.equal(disk.labels, memory.labels)
    assert all(torch.equal(a, b) for a, b in zip(disk.regions, memory.regions, strict=True))
    assert torch.equal(disk.maps.to_tensor(), memory.maps)
    assert torch.equal(disk.masks.to_tensor(), memory.masks)
    # Every indexing form the callers use.
    assert torch.equal(disk.maps[7], memory.maps[7])
    assert torch.equal(disk.maps[-1], memory.maps[-1])
    assert torch.equal(disk.maps[4, 0], memory.maps[4, 0])
    assert torch.equal(disk.maps[3:9], memory.maps[3:9])
    assert torch.equal(disk.maps[3:4][0, 0], memory.maps[3:4][0, 0])
    assert torch.equal(disk.maps[1:12:4], memory.maps[1:12:4])
    assert torch.equal(disk.read_maps([14, 0, 5]), memory.maps[[14, 0, 5]])
    assert torch.equal(disk.read_masks([2]), memory.masks[[2]])
    chosen = torch.zeros(15, dtype=torch.bool)
    chosen[[1, 8]] = True
    assert torch.equal(disk.maps[chosen], memory.maps[chosen])
    with pytest.raises(IndexError):
        disk.maps[15]
    assert torch.equal(disk.maps, memory.maps)  # torch functions read the whole array (small callers)
    pieces = list(disk.chunks(4))
    assert [start for start, _, _ in pieces] == [0, 4, 8, 12]
    assert torch.equal(torch.cat([maps for _, maps, _ in pieces]), memory.maps)
    assert torch.equal(torch.cat([masks for _, _, masks in pieces]), memory.masks)


def test_spilled_files_are_removed_on_close_and_on_garbage_collection(tmp_path):
    store = _filled(0, tmp_path)
    predictions = store.finish()
    directory = store.directory
    assert (directory / "maps.bin").exists() and (directory / "masks.bin").exists()
    predictions.close()
    assert not directory.exists()
    with pytest.raises(RuntimeError, match="closed"):
        predictions.maps[0]

    store = _filled(0, tmp_path)
    directory = store.directory
    predictions = store.finish()
    del store
    gc.collect()
    assert directory.exists()  # the predictions still read it
    del predictions
    gc.collect()
    assert not directory.exists() and list(tmp_path.iterdir()) == []


def test_non_binary_masks_are_stored_as_they_are(tmp_path):
    store = PredictionStore(0, directory=tmp_path)
    masks = torch.tensor([0.0, 0.5, 1.0]).reshape(3, 1, 1, 1)
    store.append(paths=["a", "b", "c"], scores=torch.zeros(3), maps=torch.zeros(3, 1, 1, 1), masks=masks)
    predictions = store.finish()
    assert predictions.masks.file_dtype.itemsize == 4 and torch.equal(predictions.masks.to_tensor(), masks)


def test_spill_limit_from_the_environment(monkeypatch):
    monkeypatch.setenv("ADCORE_SPILL_MB", "0.5")
    assert default_spill_bytes() == 512 * 1024
    monkeypatch.delenv("ADCORE_SPILL_MB")
    assert default_spill_bytes() == 64 * 1024 * 1024


def test_engine_predictions_spilled_equal_in_memory_and_metrics_agree_within_bounds(shared_mvtec, tmp_path):
    splits = load_data(f"mvtec:{shared_mvtec}")
    detector = TinyMean()
    engine = Engine(device="cpu", progress=False, batch_size=4, log=lambda message: None)
    engine.fit(detector, AnomalyDataset(splits.train, detector.input_spec), calibrate=False)
    test = AnomalyDataset(splits.test, detector.input_spec, has_masks=True)
    exact, memory = engine.test(detector, test)
    binned, disk = engine.test(detector, test, spill_bytes=0)
    assert not memory.on_disk and disk.on_disk
    assert torch.equal(disk.maps.to_tensor(), memory.maps) and torch.equal(disk.masks.to_tensor(), memory.masks)
    assert torch.equal(disk.scores, memory.scores)
    assert "pixel_metrics_binned" not in exact and binned["pixel_metrics_binned"] is True
    assert binned["image_auroc"] == exact["image_auroc"]
    for key in ("pixel_auroc", "pixel_aupro", "pixel_f1_max"):
        assert abs(binned[key] - exact[key]) <= binned[f"{key}_error_bound"] + 1e-12, key
    assert binned["pixel_auroc_error_bound"] < 1e-3

    # Calibration on spilled maps: the same min/max, thresholds close to the in-memory ones.
    summary_disk = engine.calibrate(detector, disk)
    disk_state = detector.post_processor.summary()
    engine.calibrate(detector, memory)
    memory_state = detector.post_processor.summary()
    assert summary_disk["pixel_threshold_binned"] is True
    assert disk_state["pixel_min"] == pytest.approx(memory_state["pixel_min"])
    assert disk_state["pixel_max"] == pytest.approx(memory_state["pixel_max"])
    assert disk_state["image_threshold"] == memory_state["image_threshold"]
    assert math.isfinite(disk_state["pixel_threshold"])


def test_calibration_quantile_from_spilled_normal_maps_is_within_its_bound(tmp_path):
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(40, 1, 16, 16, generator=g).exp()
    labels = torch.tensor([0, 1] * 20)
    store = PredictionStore(0, directory=tmp_path)
    for start in range(0, 40, 8):
        store.append(
            paths=[str(i) for i in range(start, start + 8)],
            scores=maps[start : start + 8].amax(dim=(1, 2, 3)),
            maps=maps[start : start + 8],
            labels=labels[start : start + 8],
        )
    predictions = store.finish()
    from adcore.postprocess import PostProcessor

    summary = PostProcessor().calibrate(predictions.scores, None, predictions.maps, None, 0.99)
    exact = float(torch.quantile(maps.flatten(), 0.99))
    assert summary["pixel_threshold_rule"] == "quantile"
    assert abs(summary["pixel_threshold"] - exact) <= summary["pixel_threshold_error_bound"]
    assert summary["pixel_threshold_error_bound"] < 0.01 * exact  # sparse tail: the two order statistics

    by_label = PostProcessor().calibrate(predictions.scores, labels, predictions.maps, None, 0.99)
    exact_normal = float(torch.quantile(maps[labels == 0].flatten(), 0.99))
    assert abs(by_label["pixel_threshold"] - exact_normal) <= by_label["pixel_threshold_error_bound"]


def test_compute_metrics_keeps_the_exact_path_for_tensors():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(6, 1, 8, 8, generator=g)
    masks = (torch.rand(6, 1, 8, 8, generator=g) > 0.8).float()
    exact = compute_metrics(torch.rand(6), None, maps, masks)
    assert set(exact) == {"pixel_auroc", "pixel_aupro", "pixel_f1_max"}
    forced = compute_metrics(torch.rand(6), None, maps, masks, binned=True)
    assert forced["pixel_metrics_binned"] is True
