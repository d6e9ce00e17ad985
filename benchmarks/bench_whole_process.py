"""The whole process as a user runs it: ``adcore fit`` beside anomalib 2.7.0's fit + test.

Issue 16 ("the whole process, not only the model"). Each side is one fresh process, timed
from outside (``subprocess``, wall clock from launch to exit): interpreter start, imports,
plugin discovery, data listing, fitting, calibration, scoring, metrics, the checkpoint and
every file a run writes. Runs are interleaved A/B (the order flips every repeat) and the
median of ``--repeats`` (default 3) is reported with the load average seen at each launch.

* adcore: exactly ``.venv/bin/adcore fit --model M --data mvtec:PATH --output TMP`` (defaults:
  fp32, batch 16, 50 heatmap panels, the aspect-kept input size), plus ``--epochs N`` for
  gradient models (``--epochs``, default 2, the same on both sides).
* anomalib 2.7.0: ``benchmarks/peer/run_anomalib.py`` in the peer venv on the same images,
  the same input size, the same ImageNet ``tf_efficientnet_lite0`` weights and the same
  epochs (the spec comes from ``bench_suite.peer_spec``; nothing is copied here). It fits
  and tests with anomalib's Engine (its metrics: image/pixel AUROC, AUPRO) and writes no
  images, so its time is a lower bound of what ``anomalib fit`` + ``anomalib test`` cost.

``--phases`` adds one more adcore run per model with per-phase timers installed by
wrapping the library's functions in the same process (``--phase-run``, internal): the seconds
spent in imports, detector creation, fitting, scoring, calibration, metrics, checkpoint,
tables, heatmaps and the loss curve (exclusive times; "other" is the rest).

    .venv/bin/python benchmarks/bench_whole_process.py                       # padim, stfpm, patchcore
    .venv/bin/python benchmarks/bench_whole_process.py --models padim --repeats 5 --phases
    .venv/bin/python benchmarks/bench_whole_process.py --no-peer --phases --json out.json

Results depend on load: the load average at each launch is printed; on a shared machine take
numbers when it is lowest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
ADCORE = Path(sys.executable).with_name("adcore")
MODELS = ("padim", "stfpm", "patchcore")
#: Models trained with gradients: their epochs are set equal on both sides (--epochs).
GRADIENT = {"stfpm"}


def load_average() -> float:
    return os.getloadavg()[0]


def adcore_command(model: str, category: str, output: Path, epochs: int | None) -> list[str]:
    import bench_suite

    command = [str(ADCORE), "fit", "--model", model, "--data", bench_suite.data_spec(category), "--output", str(output)]
    return command + (["--epochs", str(epochs)] if epochs is not None else [])


def timed(command: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done


def run_adcore(model: str, category: str, epochs: int | None, scratch: Path) -> dict:
    output = scratch / f"adcore-{model}"
    load = load_average()
    seconds, _ = timed(adcore_command(model, category, output, epochs))
    report = json.loads((output / "report.json").read_text())
    metrics = report.get("metrics", {})
    return {
        "wall_s": seconds,
        "load": load,
        "fit_s": report.get("fit_seconds"),
        "image_auroc": metrics.get("image_auroc"),
        "pixel_auroc": metrics.get("pixel_auroc"),
    }


def peer_spec_file(model: str, category: str, epochs: int | None, scratch: Path, venv: Path) -> Path:
    import bench_suite

    spec = bench_suite.peer_spec(model, category)
    spec["weights"] = str(bench_suite.peer_weights(bench_suite.default_cache()))
    if model in GRADIENT:
        spec["epochs"] = epochs
    path = scratch / f"peer-{model}.json"
    path.write_text(json.dumps(spec))
    return path


def run_peer(spec_file: Path, venv: Path, limit_minutes: float) -> dict:
    """One anomalib run (bench_suite's runner: past ``limit_minutes`` it and its children are
    killed and the run is recorded as not finished)."""
    import bench_suite

    load = load_average()
    os.environ["HF_HUB_OFFLINE"] = "1"
    body = bench_suite.run_process([str(venv / "bin" / "python"), str(bench_suite_runner()), str(spec_file)], limit_minutes)
    if body["status"] == "timeout":
        return {"wall_s": None, "load": load, "did_not_finish_min": limit_minutes}
    if body["status"] != "ok":
        raise SystemExit(f"anomalib run failed: {body['message']}")
    row = body["metrics"]
    n_test = len(json.loads(spec_file.read_text())["test"])
    test_s = n_test / row["test_img_s"] if row.get("test_img_s") else None
    return {
        "wall_s": body["wall_s"],
        "load": load,
        "fit_s": row.get("fit_s"),
        "test_s": test_s,
        "image_auroc": row.get("image_auroc"),
        "pixel_auroc": row.get("pixel_auroc"),
    }


def bench_suite_runner() -> Path:
    import bench_suite

    return bench_suite.PEER_RUNNER


# ----------------------------------------------------------------------------- phase timers (in process)

#: (module, attribute path, phase): functions wrapped by --phase-run; times are exclusive.
PHASES = (
    ("adcore.cli", "_detector_from_args", "create detector"),
    ("adcore.engine", "Engine.fit", "fit"),
    ("adcore.engine", "Engine.predict", "predict"),
    ("adcore.engine", "Engine.calibrate", "calibrate"),
    ("adcore.engine", "Engine.evaluate", "metrics"),
    ("adcore.run", "start_checkpoint", "checkpoint (copies; the file is written by a thread)"),
    ("adcore.run", "predictions_table", "tables"),
    ("adcore.run", "write_table", "tables"),
    ("adcore.run", "atomic_write_json", "json files"),
    ("adcore.run", "_visual_output", "heatmaps"),
    ("adcore.run", "save_loss_curve", "loss curve"),
)


def phase_run(argv: list[str]) -> None:
    """Run ``adcore`` with ``argv`` in this process, timing its phases (written to $BENCH_PHASES_OUT)."""
    import importlib
    from collections import defaultdict

    launched = float(os.environ["BENCH_LAUNCHED"])
    totals: dict[str, float] = defaultdict(float)
    stack: list[list[float]] = []  # [start, child seconds]

    def wrap(function, phase):
        def timed_call(*args, **kwargs):
            stack.append([time.perf_counter(), 0.0])
            try:
                return function(*args, **kwargs)
            finally:
                start, children = stack.pop()
                elapsed = time.perf_counter() - start
                totals[phase] += elapsed - children
                if stack:
                    stack[-1][1] += elapsed

        return timed_call

    # Imports the command makes, measured up front (the lazily imported ones stay in their phase).
    started = time.time()
    import adcore.cli
    import adcore.run  # torch, the engine, metrics, artifacts

    model = argv[argv.index("--model") + 1]
    adcore.cli.get_registry().detector_class(model)  # the plugin's model module (timm)
    totals["imports"] = time.time() - started
    totals["interpreter start"] = started - launched
    for module_name, path, phase in PHASES:
        owner = importlib.import_module(module_name)
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        setattr(owner, name, wrap(getattr(owner, name), phase))
    code = adcore.cli.main(argv)
    totals["whole (in process)"] = time.time() - launched
    Path(os.environ["BENCH_PHASES_OUT"]).write_text(json.dumps(dict(totals)))
    sys.exit(code)


def run_phases(model: str, category: str, epochs: int | None, scratch: Path, workers: int | None = None) -> dict:
    output = scratch / f"phases-{model}"
    out = scratch / f"phases-{model}.json"
    command = adcore_command(model, category, output, epochs)[1:]
    env = {**os.environ, "BENCH_PHASES_OUT": str(out)}
    if workers is not None:
        env["BENCH_NUM_WORKERS"] = str(workers)
    load = load_average()
    env["BENCH_LAUNCHED"] = repr(time.time())
    seconds, _ = timed([sys.executable, str(Path(__file__).resolve()), "--phase-run", *command], env=env)
    phases = json.loads(out.read_text())
    named = sum(v for k, v in phases.items() if k != "whole (in process)")
    phases["other"] = phases["whole (in process)"] - named
    return {"wall_s": seconds, "load": load, "phases": phases}


# ----------------------------------------------------------------------------- main


def median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="epochs of gradient models, both sides (default 2)")
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--peer-venv", help="venv with anomalib 2.7.0 (default: as bench_suite finds it)")
    parser.add_argument(
        "--peer-limit", type=float, default=30.0, help="minutes after which an anomalib run is stopped (default 30)"
    )
    parser.add_argument("--phases", action="store_true", help="also one adcore run per model with phase timers")
    parser.add_argument("--json", help="write every measurement to this file")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(BENCHMARKS))
    import bench_suite

    models = [m for m in args.models.split(",") if m]
    venv = bench_suite.ensure_peer_venv(args.peer_venv) if args.peer else None
    results: dict = {"models": {}, "started_load": load_average(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-whole-") as tmp:
        scratch = Path(tmp)
        specs = {m: peer_spec_file(m, args.category, args.epochs, scratch, venv) for m in models} if venv else {}
        runs = {m: {"adcore": [], "anomalib": []} for m in models}
        for repeat in range(args.repeats):
            for model in models:
                epochs = args.epochs if model in GRADIENT else None
                order = ["adcore", "anomalib"] if repeat % 2 == 0 else ["anomalib", "adcore"]
                for tool in order:
                    if tool == "anomalib" and not venv:
                        continue
                    row = (
                        run_adcore(model, args.category, epochs, scratch)
                        if tool == "adcore"
                        else run_peer(specs[model], venv, args.peer_limit)
                    )
                    runs[model][tool].append(row)
                    took = f"{row['wall_s']:6.1f} s" if row["wall_s"] is not None else f"did not finish in {args.peer_limit:g} min"
                    print(
                        f"[{repeat + 1}/{args.repeats}] {model:<10} {tool:<8} {took}  load {row['load']:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
        for model in models:
            entry = {"runs": runs[model], "epochs": args.epochs if model in GRADIENT else None}
            if args.phases:
                epochs = args.epochs if model in GRADIENT else None
                entry["phases"] = run_phases(model, args.category, epochs, scratch)
            results["models"][model] = entry
    results["finished_load"] = load_average()
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def print_table(results: dict) -> None:
    print(f"\nwhole process, median of runs (wall s from outside); {results['cpus']} CPUs")
    print(
        f"{'model':<10} {'epochs':>6} {'adcore s':>9} {'anomalib s':>11} {'ratio':>6} {'load':>10}  adcore img AUROC / peer"
    )
    for model, entry in results["models"].items():
        a, p = entry["runs"]["adcore"], entry["runs"]["anomalib"]
        am, pm = median(a, "wall_s"), median(p, "wall_s")
        loads = [r["load"] for r in a + p]
        unfinished = [r for r in p if r.get("did_not_finish_min") is not None]
        if unfinished and am:  # a stopped peer run: its time is at least the limit
            pm = None
            ratio = f">{unfinished[0]['did_not_finish_min'] * 60 / am:.0f}x"
        else:
            ratio = f"{pm / am:5.2f}x" if am and pm else "-"
        auroc = f"{median(a, 'image_auroc') or float('nan'):.3f} / {median(p, 'image_auroc') or float('nan'):.3f}"
        print(
            f"{model:<10} {entry['epochs'] or '-':>6} {am or float('nan'):9.1f} {pm or float('nan'):11.1f} {ratio:>6} "
            f"{min(loads):.2f}-{max(loads):.2f}  {auroc}"
        )
    for model, entry in results["models"].items():
        if "phases" in entry:
            phases = entry["phases"]["phases"]
            print(
                f"\nadcore {model} phases (s, exclusive; wall {entry['phases']['wall_s']:.1f} s, load {entry['phases']['load']:.2f})"
            )
            for name, seconds in sorted(phases.items(), key=lambda kv: -kv[1]):
                print(f"  {name:<20} {seconds:6.2f}")
        peer = entry["runs"]["anomalib"]
        if peer and all(r.get("wall_s") is not None for r in peer):
            fit, test, wall = median(peer, "fit_s"), median(peer, "test_s"), median(peer, "wall_s")
            print(f"anomalib {model}: fit {fit:.1f} s, test {test:.1f} s, imports+rest {wall - fit - test:.1f} s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--phase-run":
        workers = os.environ.get("BENCH_NUM_WORKERS")
        if workers is not None:  # measuring decoding in DataLoader worker processes (Engine.num_workers)
            import adcore.cli

            make_engine = adcore.cli._engine

            def engine_with_workers(args):
                engine = make_engine(args)
                engine.num_workers = int(workers)
                return engine

            adcore.cli._engine = engine_with_workers
        phase_run(sys.argv[2:])
    else:
        main()
