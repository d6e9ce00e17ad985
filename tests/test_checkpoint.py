"""Checkpoints: one safetensors file, exact round trip, clear errors, atomic writes."""

import json
import struct

import pytest
import safetensors
import safetensors.torch
import torch
from adcore.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint, start_checkpoint
from adcore.data import AnomalyDataset, load_data
from adcore.engine import Engine
from tiny_detectors import TinyMean


def _fit(detector, root):
    splits = load_data(f"mvtec:{root}")
    engine = Engine(device="cpu", progress=False, batch_size=8)
    train = AnomalyDataset(splits.train, detector.input_spec)
    test = AnomalyDataset(splits.test, detector.input_spec, has_masks=True)
    engine.fit(detector, train, test)
    return engine, test


@pytest.fixture
def fitted_tiny(tiny_registry, shared_mvtec):
    detector = TinyMean(pool=8)
    engine, test = _fit(detector, shared_mvtec)
    return detector, engine, test


def _assert_same_predictions(engine, a, b, dataset):
    first, second = engine.predict(a, dataset), engine.predict(b, dataset)
    assert torch.equal(first.scores, second.scores)
    assert torch.equal(first.maps, second.maps)


def test_round_trip_is_exact(fitted_tiny, tmp_path, tiny_registry):
    detector, engine, test = fitted_tiny
    path = save_checkpoint(detector, tmp_path / "model.safetensors", extra={"run": {"note": "hello"}})
    loaded, metadata = load_checkpoint(path, registry=tiny_registry)
    assert type(loaded) is TinyMean and loaded.config == detector.config  # pool=8 survived
    assert bool(loaded.is_fitted)
    _assert_same_predictions(engine, detector, loaded, test)
    assert metadata["detector"] == "tiny-mean"
    assert metadata["plugin"] == "tiny-test-plugin" and metadata["plugin_version"] == "0.0.1"
    assert metadata["run"] == {"note": "hello"}
    assert metadata["config"] == {"image_size": [64, 64], "pool": 8}


def test_a_background_checkpoint_holds_the_detector_as_it_was_when_started(fitted_tiny, tmp_path, tiny_registry):
    detector, _, _ = fitted_tiny
    detector.post_processor.set_manual_threshold(image=1.5)
    pending = start_checkpoint(detector, tmp_path / "model.safetensors")
    detector.post_processor.set_manual_threshold(image=7.0)  # changed while (or before) the thread writes
    loaded, metadata = load_checkpoint(pending.result(), registry=tiny_registry)
    assert float(loaded.post_processor.image_threshold) == 1.5
    assert metadata["post_processing"]["image_threshold"] == pytest.approx(1.5)
    with open(tmp_path / "model.safetensors", "rb") as handle:  # byte for byte what save_checkpoint writes
        written = handle.read()
    detector.post_processor.set_manual_threshold(image=1.5)
    assert save_checkpoint(detector, tmp_path / "again.safetensors").read_bytes() == written


def test_thresholds_survive(fitted_tiny, tmp_path, tiny_registry):
    detector, _, _ = fitted_tiny
    post = detector.post_processor
    assert post.is_calibrated and not torch.isnan(post.pixel_threshold)
    detector.post_processor.set_manual_threshold(image=1.2345)
    loaded, metadata = load_checkpoint(save_checkpoint(detector, tmp_path / "m.safetensors"), registry=tiny_registry)
    for name, value in post.named_buffers():
        assert torch.equal(getattr(loaded.post_processor, name), value), name
    assert float(loaded.post_processor.image_threshold) == 1.2345
    assert metadata["post_processing"]["image_threshold"] == pytest.approx(1.2345)


def test_padim_round_trip(tmp_path, shared_mvtec):
    from adcore_padim.model import Padim

    detector = Padim(image_size=(64, 64), n_features=40)
    engine, test = _fit(detector, shared_mvtec)
    path = save_checkpoint(detector, tmp_path / "padim.safetensors")
    loaded, metadata = load_checkpoint(path)
    assert metadata["plugin_distribution"] == "adcore-padim"
    assert loaded.gaussian.mean.shape == detector.gaussian.mean.shape  # sized by the data
    assert torch.equal(loaded.channel_index, detector.channel_index)
    _assert_same_predictions(engine, detector, loaded, test)
    for name, value in detector.post_processor.named_buffers():
        assert torch.equal(getattr(loaded.post_processor, name), value)


def test_file_is_plain_safetensors_without_pickle(fitted_tiny, tmp_path):
    detector, _, _ = fitted_tiny
    path = save_checkpoint(detector, tmp_path / "model.safetensors")
    with safetensors.safe_open(str(path), framework="pt") as handle:
        assert set(handle.keys()) == set(detector.state_dict())
        assert "adcore" in handle.metadata()
    # The whole file is: 8-byte header length, a JSON header, raw tensor bytes. Nothing else
    # (no pickle, no zip archive) can hide in it.
    data = path.read_bytes()
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_size])
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    assert len(data) == 8 + header_size + max(ends)
    assert not data.startswith(b"PK") and data[8:9] == b"{"
    assert read_metadata(path)["config"]["pool"] == 8


@pytest.mark.parametrize("kind", ["missing", "random", "empty", "foreign", "truncated"])
def test_bad_checkpoints_raise_naming_the_file(kind, tmp_path, tiny_registry, fitted_tiny):
    path = tmp_path / f"{kind}.safetensors"
    if kind == "random":
        path.write_bytes(torch.randint(0, 256, (300,), dtype=torch.uint8).numpy().tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign":  # a valid safetensors file not written by adcore
        safetensors.torch.save_file({"x": torch.zeros(3)}, str(path))
    elif kind == "truncated":
        good = save_checkpoint(fitted_tiny[0], tmp_path / "good.safetensors").read_bytes()
        path.write_bytes(good[: len(good) - 100])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, registry=tiny_registry)
    assert str(path) in str(info.value)


def test_tensors_that_do_not_fit_are_refused(fitted_tiny, tmp_path, tiny_registry):
    detector, _, _ = fitted_tiny
    path = save_checkpoint(detector, tmp_path / "model.safetensors")
    with safetensors.safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys() if key != "mean"}  # noqa: SIM118 (safe_open handle, not a dict)
    safetensors.torch.save_file(tensors, str(path), metadata=header)
    with pytest.raises(CheckpointError, match="do not fit detector 'tiny-mean'") as info:
        load_checkpoint(path, registry=tiny_registry)
    assert str(path) in str(info.value)


def test_newer_format_is_refused(fitted_tiny, tmp_path, tiny_registry):
    detector, _, _ = fitted_tiny
    path = save_checkpoint(detector, tmp_path / "model.safetensors", extra={"format_version": 99})
    with pytest.raises(CheckpointError, match="newer adcore"):
        load_checkpoint(path, registry=tiny_registry)


def test_failed_write_leaves_the_previous_checkpoint(fitted_tiny, tmp_path, tiny_registry, monkeypatch):
    detector, engine, test = fitted_tiny
    path = save_checkpoint(detector, tmp_path / "model.safetensors")
    before = path.read_bytes()

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\x00" * 100)  # a partial file...
        raise OSError("disk full")  # ...then the write fails

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    detector.post_processor.set_manual_threshold(image=123.0)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(detector, path)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp files left
    loaded, _ = load_checkpoint(path, registry=tiny_registry)
    assert float(loaded.post_processor.image_threshold) != 123.0
    _assert_same_predictions(engine, detector, loaded, test)
