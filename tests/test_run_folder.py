"""Run folders are complete or absent, one writer at a time, and checked before any work;
the seed reaches every model; careless command lines get one line, not a traceback."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from adcore.checkpoint import load_checkpoint
from adcore.cli import main
from adcore.run_folder import RunFolder
from helpers import make_mvtec, single_thread


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_mvtec(tmp_path_factory.mktemp("run-folder-data") / "category")


def _fit(data_root, output, *extra) -> int:
    with single_thread():
        return main(
            ["fit", "--model", "padim", "--data", f"mvtec:{data_root}", "--output", str(output)]
            + ["--image-size", "32", "--no-progress", "--heatmaps", "2", *map(str, extra)]
        )


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("adcore: error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def test_a_second_fit_replaces_the_whole_run_folder(data_root, tmp_path):
    output = tmp_path / "run"
    assert _fit(data_root, output) == 0
    (output / "heatmaps" / "stale-from-an-old-run.png").write_bytes(b"old")
    assert _fit(data_root, output, "--seed", "1") == 0
    assert not (output / "heatmaps" / "stale-from-an-old-run.png").exists()  # runs never mix
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", "run"]  # no staging or old folders left


def test_an_unwritable_output_fails_before_fitting(data_root, tmp_path, capsys):
    if os.geteuid() == 0:
        # root ignores permission bits: a file where the folder should be tests the same early check
        target = tmp_path / "parent-file"
        target.write_text("not a folder")
        assert _fit(data_root, target / "run") == 2
        line = _one_line_error(capsys)
        assert "parent-file" in line
    else:
        folder = tmp_path / "readonly"
        folder.mkdir()
        folder.chmod(0o500)
        assert _fit(data_root, folder / "run") == 2
        assert "not writable" in _one_line_error(capsys)
    assert "fitting padim" not in capsys.readouterr().err  # nothing was fitted


def test_an_output_path_that_is_a_file_fails_before_fitting(data_root, tmp_path, capsys):
    target = tmp_path / "model.txt"
    target.write_text("precious")
    assert _fit(data_root, target) == 2
    assert "exists and is not a folder" in _one_line_error(capsys)
    assert target.read_text() == "precious"


def test_too_little_free_space_fails_before_fitting(data_root, tmp_path, capsys, monkeypatch):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=10 * 1024**2))
    assert _fit(data_root, tmp_path / "run") == 2
    assert "only 10 MB free" in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_a_full_disk_while_writing_keeps_the_previous_run(data_root, tmp_path, capsys, monkeypatch):
    output = tmp_path / "run"
    assert _fit(data_root, output) == 0
    before = _snapshot(output)
    import adcore.run

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(output / "report.json"))

    monkeypatch.setattr(adcore.run, "atomic_write_json", full)
    capsys.readouterr()
    assert _fit(data_root, output, "--seed", "1") == 2
    line = _one_line_error(capsys)
    assert "No space left on device" in line
    assert _snapshot(output) == before  # the previous run, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", "run"]


def test_a_full_disk_while_the_checkpoint_thread_writes_keeps_the_previous_run(data_root, tmp_path, capsys, monkeypatch):
    """The checkpoint is written by a thread during scoring; its failure still fails the run."""
    output = tmp_path / "run"
    assert _fit(data_root, output) == 0
    before = _snapshot(output)
    import safetensors.torch

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(filename))

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    capsys.readouterr()
    assert _fit(data_root, output, "--seed", "1") == 2
    assert "No space left on device" in _one_line_error(capsys)
    assert _snapshot(output) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", "run"]


def test_two_writers_to_one_folder_the_second_is_refused(data_root, tmp_path, capsys):
    output = tmp_path / "run"
    with RunFolder(output):
        assert _fit(data_root, output) == 2
    assert "another adcore command is writing" in _one_line_error(capsys)


def test_a_killed_fit_leaves_the_previous_run_and_the_next_run_cleans_up(data_root, tmp_path):
    output = tmp_path / "run"
    assert _fit(data_root, output) == 0
    before = _snapshot(output)
    command = [sys.executable, "-m", "adcore", "fit", "--model", "padim", "--data", f"mvtec:{data_root}"]
    command += ["--output", str(output), "--image-size", "32", "--no-progress", "--seed", "3"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".run.staging-*")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert _snapshot(output) == before  # complete or absent: here, the previous run
    assert _fit(data_root, output, "--seed", "4") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", "run"]  # leftovers removed


def test_the_seed_reaches_padim(data_root, tmp_path):
    assert _fit(data_root, tmp_path / "a", "--seed", "0") == 0
    assert _fit(data_root, tmp_path / "b", "--seed", "1") == 0
    assert _fit(data_root, tmp_path / "c", "--seed", "0") == 0
    a, meta = load_checkpoint(tmp_path / "a" / "model.safetensors")
    b, _ = load_checkpoint(tmp_path / "b" / "model.safetensors")
    c, _ = load_checkpoint(tmp_path / "c" / "model.safetensors")
    assert not torch.equal(a.channel_index, b.channel_index)
    assert torch.equal(a.channel_index, c.channel_index)
    assert "seed" not in meta["config"] and meta["run"]["seed"] == 0  # one seed, recorded once


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--param", "seed=1"], "parameter 'seed' no longer exists"),
        (["--param", "n_features=abc"], "padim: n_features must be an integer, got 'abc'"),
        (["--epochs", "3"], "epochs: detector 'padim' has no stage trained for epochs (it fits in one pass)"),
        (["--param", "no_such=1"], "unknown parameter(s) ['no_such']"),
    ],
)
def test_careless_command_lines_get_one_line(data_root, tmp_path, capsys, extra, message):
    assert _fit(data_root, tmp_path / "run", *extra) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_that_is_not_there_is_one_line(data_root, tmp_path, capsys):
    assert _fit(data_root, tmp_path / "run", "--device", "cuda") == 2
    assert "no CUDA GPU is available" in _one_line_error(capsys)


def test_output_files_follow_the_umask(data_root, tmp_path):
    previous = os.umask(0o022)
    try:
        assert _fit(data_root, tmp_path / "run") == 0
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert modes and set(modes.values()) == {0o644}, modes  # not 0600 (mkstemp's default)
