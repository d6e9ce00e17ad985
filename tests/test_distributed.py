"""Multi-process fits (torch.distributed, gloo on this CPU): shards, batches, and the same model as one process."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from adcore.distributed import ShardedBatchSampler, shard
from helpers import make_mvtec

TESTS = Path(__file__).parent


def test_shards_are_contiguous_and_cover_every_item_once():
    for count in (1, 7, 12, 209):
        for parts in (1, 2, 3):
            pieces = [shard(count, parts, index) for index in range(parts)]
            assert [i for piece in pieces for i in piece] == list(range(count))


def test_each_global_batch_is_split_between_processes():
    """Both processes draw the same shuffle; together they take every global batch (padded to divide)."""
    count, batch_size = 11, 4
    samplers = [ShardedBatchSampler(count, batch_size, torch.Generator().manual_seed(3), 2, r) for r in (0, 1)]
    order = torch.randperm(count, generator=torch.Generator().manual_seed(3)).tolist()
    steps = [list(s) for s in samplers]
    assert len(steps[0]) == len(steps[1]) == len(samplers[0]) == 3
    for step, (first, second) in enumerate(zip(*steps)):
        assert len(first) == len(second)
        global_batch = order[step * batch_size : (step + 1) * batch_size]
        assert set(first) | set(second) == set(global_batch)  # the last batch repeats one image to divide by 2
    with pytest.raises(ValueError, match="at least 3 training images"):
        ShardedBatchSampler(2, 4, torch.Generator(), 3, 0)


def _adcore(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "adcore", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def _scores(run: Path) -> list[float]:
    with open(run / "predictions.csv") as table:
        return [float(row["score"]) for row in csv.DictReader(table)]


# PaDiM keeps 16 of its channels: a Gaussian fitted on 24 tiny images is then well conditioned.
# With all 100 (rank-deficient covariances, only the 0.01 ridge) float32 rounding in the sums
# is amplified to ~3e-5 here; on MVTec bottle at the defaults the two fits agree to 2e-6.
@pytest.mark.parametrize(
    ("model", "params"), [("padim", ["--param", "n_features=16"]), ("patchcore", []), ("dfm", [])]
)
def test_two_process_fit_gives_the_one_process_scores(tmp_path, model, params):
    """PaDiM adds the shards' sums, PatchCore and DFM gather their rows in order: the one-process detector."""
    data = make_mvtec(tmp_path / "category", n_train=24)
    runs = {}
    for processes in (1, 2):
        output = tmp_path / f"run{processes}"
        done = _adcore(
            "fit", "--model", model, "--data", f"mvtec:{data}", "--output", str(output), "--image-size", "64",
            "--heatmaps", "0", "--no-progress", "--nproc", str(processes), *params, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        runs[processes] = _scores(output)
    assert (output / "model.safetensors").is_file()
    one, two = torch.tensor(runs[1]), torch.tensor(runs[2])
    assert torch.allclose(two, one, rtol=1e-5, atol=0), (one, two)


def test_gradient_training_keeps_the_processes_weights_identical(tmp_path):
    """Gradients are averaged after every backward pass: both processes end with the same, trained, weights."""
    data = make_mvtec(tmp_path / "category", n_train=10)
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(TESTS)!r})
            import torch
            from adcore import AnomalyDataset, Engine, ImageRecord
            from adcore import distributed
            from tiny_detectors import TinyGrad

            torch.manual_seed(0)
            detector = TinyGrad(epochs=3)
            start = torch.cat([p.detach().flatten() for p in detector.parameters()]).clone()
            records = [ImageRecord(p) for p in sorted(__import__("pathlib").Path({str(data)!r}).glob("train/good/*.png"))]
            report = Engine(progress=False, batch_size=4, seed=5).fit(detector, AnomalyDataset(records, detector.input_spec))
            end = torch.cat([p.detach().flatten() for p in detector.parameters()])
            torch.save({{"start": start, "end": end}}, {str(tmp_path)!r} + f"/rank{{distributed.rank()}}.pt")
            distributed.finish()
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(first["start"], second["start"])
    assert not torch.allclose(first["end"], first["start"])  # it trained
    assert torch.allclose(first["end"], second["end"], rtol=0, atol=1e-7)


def test_nproc_must_be_positive(tmp_path):
    data = make_mvtec(tmp_path / "category", n_train=4)
    done = _adcore("fit", "--model", "padim", "--data", f"mvtec:{data}", "--nproc", "0", cwd=tmp_path)
    assert done.returncode == 2
    assert "--nproc must be at least 1" in done.stderr
