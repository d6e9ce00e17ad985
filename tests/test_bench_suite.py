"""benchmarks/bench_suite.py without training anything: cache keys, resumption, the time bound,
the matrix, the peer's table against adcore's defaults, and the peer's weight check."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


suite = _load("bench_suite", BENCHMARKS / "bench_suite.py")
peer = _load("run_anomalib", BENCHMARKS / "peer" / "run_anomalib.py")


def ok(image, pixel=None, aupro=None, fit=10.0, speed=20.0, rss=900.0):
    metrics = {"image_auroc": image, "pixel_auroc": pixel, "pixel_aupro": aupro}
    metrics |= {"fit_s": fit, "test_img_s": speed, "peak_rss_mb": rss}
    return {"status": "ok", "metrics": metrics, "wall_s": fit + 5}


# ----------------------------------------------------------------------------- cache


def test_cell_key_separates_every_field(tmp_path):
    base = suite.cell_key("adcore", "padim", "bottle", "abc", {"seed": 0})
    variants = [
        suite.cell_key("anomalib-2.7.0", "padim", "bottle", "abc", {"seed": 0}),
        suite.cell_key("adcore", "dfm", "bottle", "abc", {"seed": 0}),
        suite.cell_key("adcore", "padim", "kolektorsdd", "abc", {"seed": 0}),
        suite.cell_key("adcore", "padim", "bottle", "def", {"seed": 0}),
        suite.cell_key("adcore", "padim", "bottle", "abc", {"seed": 1}),
    ]
    paths = {suite.cell_path(tmp_path, k) for k in [base, *variants]}
    assert len(paths) == 6
    assert suite.cell_path(tmp_path, base) == suite.cell_path(tmp_path, dict(base))


def test_cache_round_trip_rejects_other_keys_and_torn_files(tmp_path):
    key = suite.cell_key("adcore", "padim", "bottle", "abc", {"seed": 0})
    suite.save_cell(tmp_path, {"key": key, **ok(0.99)})
    assert suite.load_cell(tmp_path, key)["metrics"]["image_auroc"] == 0.99
    other = suite.cell_key("adcore", "padim", "bottle", "abd", {"seed": 0})
    assert suite.load_cell(tmp_path, other) is None
    suite.cell_path(tmp_path, key).write_text('{"key": ')  # a run killed while writing
    assert suite.load_cell(tmp_path, key) is None


def test_default_cache_depends_on_settings(monkeypatch):
    first = suite.default_cache()
    monkeypatch.setattr(suite, "SEED", 1)
    assert suite.default_cache() != first
    assert first.parent == Path("~/.cache/adcore/bench-suite").expanduser()


@pytest.mark.parametrize(
    ("cached", "timeout", "rerun", "retry", "expected"),
    [
        (None, 30, False, False, True),
        ({"status": "ok"}, 30, False, False, False),
        ({"status": "ok"}, 30, True, False, True),
        ({"status": "skipped"}, 30, False, True, False),
        ({"status": "error"}, 30, False, False, False),
        ({"status": "error"}, 30, False, True, True),
        ({"status": "timeout", "timeout_min": 30}, 30, False, False, False),
        ({"status": "timeout", "timeout_min": 30}, 60, False, False, True),  # a longer bound now
        ({"status": "timeout", "timeout_min": 30}, 10, False, True, True),
    ],
)
def test_needs_run(cached, timeout, rerun, retry, expected):
    assert suite.needs_run(cached, timeout, rerun, retry) is expected


def test_second_run_only_runs_missing_cells(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run(command, timeout_min, cwd=None):
        model, category = json.loads(command[-1])
        calls.append((model, category))
        if model == "b" and category == "elpv":
            return {
                "status": "timeout",
                "message": f"did not finish in {timeout_min:g} min",
                "timeout_min": timeout_min,
            }
        return ok(0.9, None if category == "elpv" else 0.8, 0.7)

    monkeypatch.setattr(suite, "run_process", fake_run)
    monkeypatch.setattr(suite, "installed_models", lambda: ["a", "b", "c"])
    monkeypatch.setattr(suite, "adcore_revision", lambda model: "rev1")
    monkeypatch.setattr(suite, "uncommitted", lambda model: [])
    args = ["--cache", str(tmp_path), "--no-peer", "--categories", "bottle,elpv"]

    suite.main([*args, "--models", "a,b"])
    assert sorted(calls) == [("a", "bottle"), ("a", "elpv"), ("b", "bottle"), ("b", "elpv")]
    calls.clear()
    suite.main([*args, "--models", "a,b,c"])  # only c is new
    assert sorted(calls) == [("c", "bottle"), ("c", "elpv")]
    calls.clear()
    suite.main([*args, "--models", "b", "--timeout", "120"])  # the timed-out cell, with a longer bound
    assert calls == [("b", "elpv")]
    calls.clear()
    suite.main([*args, "--models", "a", "--rerun"])
    assert sorted(calls) == [("a", "bottle"), ("a", "elpv")]
    calls.clear()
    monkeypatch.setattr(suite, "adcore_revision", lambda model: "rev2")  # the model's code changed: all again
    suite.main([*args, "--models", "a"])
    assert len(calls) == 2
    assert "did not finish in 120 min" in capsys.readouterr().out
    calls.clear()
    monkeypatch.setattr(suite, "adcore_revision", lambda model: "rev3")
    suite.main([*args, "--models", "a,b", "--any-revision"])  # a's rev2 cells and b's rev1 cells are reused
    assert calls == []
    assert "(revision rev2)" in capsys.readouterr().out


def test_any_revision_takes_the_newest_cell_with_the_same_settings(tmp_path):
    old = suite.cell_key("adcore", "padim", "bottle", "rev1", {"seed": 0})
    new = suite.cell_key("adcore", "padim", "bottle", "rev2", {"seed": 0})
    other_settings = suite.cell_key("adcore", "padim", "bottle", "rev3", {"seed": 1})
    suite.save_cell(tmp_path, {"key": old, **ok(0.5), "finished_at": "2026-12-01T01:00:00Z"})
    suite.save_cell(tmp_path, {"key": new, **ok(0.9), "finished_at": "2026-12-01T02:00:00Z"})
    suite.save_cell(tmp_path, {"key": other_settings, **ok(0.1), "finished_at": "2026-12-01T03:00:00Z"})
    wanted = suite.cell_key("adcore", "padim", "bottle", "rev9", {"seed": 0})
    assert suite.load_any_revision(tmp_path, wanted)["metrics"]["image_auroc"] == 0.9
    assert suite.load_any_revision(tmp_path, suite.cell_key("adcore", "dfm", "bottle", "rev9", {"seed": 0})) is None


# ----------------------------------------------------------------------------- a cell's process


def test_timeout_kills_the_cell_and_records_it():
    started = time.perf_counter()
    body = suite.run_process([sys.executable, "-c", "import time; time.sleep(60)"], timeout_min=0.03)
    assert time.perf_counter() - started < 20
    assert body["status"] == "timeout"
    assert body["message"] == "did not finish in 0.03 min"


def test_crash_and_success_and_skip_are_recorded():
    crash = suite.run_process([sys.executable, "-c", "raise SystemExit('model exploded')"], timeout_min=1)
    assert crash["status"] == "error" and "model exploded" in crash["message"]
    row = suite.run_process([sys.executable, "-c", "print('log'); print('{\"image_auroc\": 0.5}')"], timeout_min=1)
    assert row["status"] == "ok" and row["metrics"] == {"image_auroc": 0.5}
    skip = suite.run_process([sys.executable, "-c", 'print(\'{"skipped": "no CLIP"}\')'], timeout_min=1)
    assert skip["status"] == "skipped" and skip["message"] == "no CLIP"


# ----------------------------------------------------------------------------- the matrix


def fake_cells():
    return {
        ("adcore", "padim", "bottle"): ok(1.0, 0.98, 0.93, fit=12, speed=40, rss=1100),
        ("adcore", "padim", "kolektorsdd"): ok(0.80, 0.50, 0.20),
        ("adcore", "padim", "elpv"): ok(0.70),
        ("adcore", "winclip", "bottle"): {"status": "skipped", "message": "needs CLIP weights"},
        ("anomalib", "padim", "bottle"): ok(0.96, 0.97, 0.90),
        ("anomalib", "padim", "kolektorsdd"): {"status": "timeout", "message": "did not finish in 30 min"},
    }


def test_means_use_only_categories_with_masks():
    means = suite.model_means(fake_cells(), "adcore", "padim", ["bottle", "kolektorsdd", "elpv"])
    assert means["image_auroc"] == pytest.approx(0.90)  # ELPV's 0.70 left out
    assert means["pixel_auroc"] == pytest.approx(0.74)
    assert means["complete"]
    partial = suite.model_means(fake_cells(), "anomalib", "padim", ["bottle", "kolektorsdd"])
    assert partial["image_auroc"] == pytest.approx(0.96) and not partial["complete"]


def test_matrix_text_and_markdown():
    rows = [("adcore", "padim"), ("adcore", "winclip"), ("anomalib", "padim")]
    categories = ["bottle", "kolektorsdd", "elpv"]
    text = suite.format_matrix(fake_cells(), rows, categories)
    lines = text.splitlines()
    padim = next(line for line in lines if line.startswith("padim "))
    assert padim.split()[1:7] == ["1.000", "0.980", "0.930", "12", "40.0", "1100"]
    assert padim.split()[-2:] == ["0.900", "0.740"]
    elpv = padim.split()[13:19]  # image AUROC only: pixel columns blank
    assert elpv[:3] == ["0.700", "-", "-"]
    assert "winclip on bottle: skip: needs CLIP weights" in text
    assert "padim (anomalib) on kolektorsdd: timeout: did not finish in 30 min" in text
    assert "0.960*" in text  # the peer's mean lacks kolektorsdd
    markdown = suite.format_markdown(fake_cells(), rows, categories, "header")
    table = next(line for line in markdown.splitlines() if line.startswith("| padim |"))
    assert "1.000 / 0.980 / 0.930" in table and "12 · 40.0 · 1100" in table and "0.700 / - / -" in table
    assert sum(line.startswith("|---") for line in markdown.splitlines()) == 1


# ----------------------------------------------------------------------------- the peer


def test_peer_table_matches_adcore_defaults():
    """The peer gets the same feature indices as adcore's defaults (the suite compares defaults)."""
    from adcore import RANDOM_INIT, create_detector

    for model, entry in suite.PEER_MODELS.items():
        if not isinstance(entry, tuple) or "backbone" not in entry[1]:
            continue
        config = create_detector(model, weights=RANDOM_INIT).config_dict()
        assert config["backbone"] == suite.PEER_BACKBONE, model
        params = entry[1]
        ours = list(config["layers"]) if "layers" in params else config["layer"]
        assert (params.get("layers") or params.get("layer")) == ours, model
    assert (
        suite.PEER_MODELS["padim"][1]["n_features"]
        == create_detector("padim", weights=RANDOM_INIT).config_dict()["n_features"]
    )


def test_peer_weight_check_catches_other_weights(tmp_path, monkeypatch):
    """The peer's timm patch loads the file, and its check fails on a backbone that does not hold it."""
    import timm
    import torch
    from safetensors.torch import save_file

    source = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    weights = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    monkeypatch.setattr(timm, "create_model", timm.create_model)  # restored after the test
    built = peer.patch_timm("tf_efficientnet_lite0", str(weights))
    timm.create_model("tf_efficientnet_lite0", pretrained=True, features_only=True, out_indices=[1, 2])
    assert peer.check_backbones(built, str(weights)) == 1
    with torch.no_grad():
        built[0].conv_stem.weight.add_(0.01)
    with pytest.raises(RuntimeError, match="conv_stem.weight differs"):
        peer.check_backbones(built, str(weights))
    with pytest.raises(RuntimeError, match="no pretrained timm backbone"):
        peer.check_backbones([], str(weights))
    with pytest.raises(RuntimeError, match="no offline weights"):
        timm.create_model("resnet18", pretrained=True)
