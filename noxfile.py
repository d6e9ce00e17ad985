"""Developer tasks. All sessions share the interpreter nox runs in (the ``./dev`` venv):
one environment of several GB instead of one per session.

    ./dev demo     fit PaDiM on real solar-cell images (ELPV), print metrics, write heatmaps
    ./dev tests    install everything and run the test suite
    ./dev bench    speed, memory and accuracy benchmarks on the MVTec bottle data
    ./dev bench-suite  every model at its defaults on every category, beside anomalib (hours; resumable)
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
#: Every distribution in the repository: the core, the SDK, each plugin folder, the example plugin.
PACKAGES = [
    "core",
    "runtime",
    "sdk",
    *sorted(str(p.parent.relative_to(ROOT)) for p in (ROOT / "plugins").glob("*/pyproject.toml")),
    "docs/examples/adcore-pixel-zscore",
]
#: Optional parts the tests exercise (installed for the tests only): export (ONNX, OpenVINO) and serve (HTTP), the runtime's backends.
EXTRAS = {"core": "[export,serve,video]", "runtime": "[onnx,openvino]"}
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
DATASETS = ROOT.parent / "shared" / "datasets"
BOTTLE = DATASETS / "mvtec_ad" / "bottle"

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "none"


def install(session: nox.Session, *groups: str) -> None:
    """Install the packages (editable) and dependency groups, skipping when nothing changed."""
    extras = EXTRAS if "test" in groups else {}  # the demo needs none of them
    requirements = [f"-e{ROOT / p}{extras.get(p, '')}" for p in PACKAGES]
    for group in groups:
        requirements += nox.project.dependency_groups(PYPROJECT, group)
    fingerprint = hashlib.sha256("\n".join(requirements).encode())
    for package in PACKAGES:
        fingerprint.update((ROOT / package / "pyproject.toml").read_bytes())
    stamp = Path(sys.prefix) / f".adcore-installed-{'-'.join(groups) or 'base'}"
    if stamp.exists() and stamp.read_text() == fingerprint.hexdigest():
        session.log("environment up to date")
        return
    session.run(sys.executable, "-m", "pip", "install", "--quiet", *requirements)
    stamp.write_text(fingerprint.hexdigest())


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite; end-to-end tests use the MVTec bottle data when it is beside the repo."""
    install(session, "test")
    env = {}
    if "ADCORE_MVTEC_BOTTLE" not in os.environ and BOTTLE.is_dir():
        env["ADCORE_MVTEC_BOTTLE"] = str(BOTTLE)
    if "ADCORE_DATASETS" not in os.environ and DATASETS.is_dir():
        env["ADCORE_DATASETS"] = str(DATASETS)
    session.run(sys.executable, "-m", "pytest", *session.posargs, env=env)


@nox.session
def demo(session: nox.Session) -> None:
    """Fit PaDiM on the ELPV solar cells (real images from PyPI), print metrics, write heatmaps."""
    install(session, "demo")
    output = session.posargs[0] if session.posargs else "runs/demo-elpv-padim"
    session.run(
        sys.executable,
        "-m",
        "adcore",
        "fit",
        "--model",
        "padim",
        "--data",
        "elpv:mono",
        "--output",
        output,
        "--heatmaps",
        "40",
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: accuracy, fit time, test throughput, peak memory, bare backbone speed."""
    install(session, "test")
    data = os.environ.get("ADCORE_MVTEC_BOTTLE", str(BOTTLE))
    session.run(sys.executable, "benchmarks/bench_models.py", "--data", data, *session.posargs)


@nox.session(name="bench-suite")
def bench_suite(session: nox.Session) -> None:
    """Every installed model at its defaults x every category, beside anomalib 2.7.0; cells cached (resumable)."""
    install(session, "test")
    env = {}
    if "ADCORE_DATASETS" not in os.environ and DATASETS.is_dir():
        env["ADCORE_DATASETS"] = str(DATASETS)
    session.run(sys.executable, "benchmarks/bench_suite.py", *session.posargs, env=env)
