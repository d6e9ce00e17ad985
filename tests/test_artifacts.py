"""Heatmap panels written by a few threads: the same files as one thread, errors still raised."""

import threading
from pathlib import Path

import numpy as np
import pytest
from adcore import artifacts, visualize
from adcore.artifacts import write_heatmaps
from adcore.data import AnomalyDataset, load_data
from adcore.engine import Engine
from PIL import Image
from tiny_detectors import TinyMean


@pytest.fixture
def scored(tiny_registry, shared_mvtec):
    detector = TinyMean(pool=8)
    splits = load_data(f"mvtec:{shared_mvtec}")
    engine = Engine(device="cpu", progress=False, batch_size=8)
    engine.fit(detector, AnomalyDataset(splits.train, detector.input_spec), None, calibrate=False)
    test = AnomalyDataset(splits.test, detector.input_spec, has_masks=True)
    predictions = engine.predict(detector, test)
    engine.calibrate(detector, predictions)
    return detector, test, predictions


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_threads_write_the_same_files_as_one_thread(scored, tmp_path, monkeypatch):
    detector, test, predictions = scored
    monkeypatch.setattr(artifacts, "HEATMAP_THREADS", 1)
    assert write_heatmaps(tmp_path / "one", detector, test, predictions, 50) == len(test)
    monkeypatch.setattr(artifacts, "HEATMAP_THREADS", 4)
    monkeypatch.setattr(artifacts.os, "cpu_count", lambda: 4)  # threads even on a 1-core runner
    assert write_heatmaps(tmp_path / "four", detector, test, predictions, 50) == len(test)
    one, four = _files(tmp_path / "one"), _files(tmp_path / "four")
    assert list(one) == list(four) and len(one) == len(test)
    assert one == four  # byte for byte
    assert not any(name.startswith(".") for name in four)  # no temporary files left behind


def test_panels_keep_their_pixels_at_the_faster_zlib_level(scored, tmp_path, monkeypatch):
    detector, test, predictions = scored
    write_heatmaps(tmp_path / "fast", detector, test, predictions, 3)
    monkeypatch.setattr(visualize, "PANEL_COMPRESS_LEVEL", 6)  # Pillow's default
    write_heatmaps(tmp_path / "default", detector, test, predictions, 3)
    names = sorted(p.name for p in (tmp_path / "fast").iterdir())
    assert len(names) == 3
    for name in names:
        with Image.open(tmp_path / "fast" / name) as a, Image.open(tmp_path / "default" / name) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_a_failing_panel_raises_once_no_thread_runs(scored, tmp_path, monkeypatch):
    detector, test, predictions = scored
    monkeypatch.setattr(artifacts.os, "cpu_count", lambda: 4)
    saved = []

    def save(path, panel):
        if path.name.startswith("0002_"):
            raise OSError("disk full")
        saved.append(path.name)
        return visualize.save_panel(path, panel)

    monkeypatch.setattr(artifacts, "save_panel", save)
    with pytest.raises(OSError, match="disk full"):
        write_heatmaps(tmp_path / "out", detector, test, predictions, 50)
    # The error reaches the caller only once no drawing thread runs any more (panels not yet
    # started are cancelled): nothing writes on into a folder the run is about to discard.
    assert not [t for t in threading.enumerate() if t.name.startswith("adcore-heatmaps")]
    assert "0002_" not in " ".join(saved) and len(saved) < len(test)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(saved)
