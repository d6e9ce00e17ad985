"""The path a stranger takes: a fresh virtual environment, adcore from its package, a
plugin scaffolded with ``adcore-sdk new`` and the example third-party plugin from
``docs/examples``; both are discovered, pass their own tests (the conformance kit) and
fit the real bottle data from the command line.

To keep time and disk down, the fresh environment reuses this one's torch and
torchvision (and their dependencies) through a ``.pth`` file pointing at a folder of
symlinks: nothing else of this environment is visible in it; pip installs the rest.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "adcore-pixel-zscore"
REUSED = ("torch", "torchvision")
NOT_REUSED = {"setuptools", "_distutils_hack", "__pycache__"}


def _closure(names: tuple[str, ...]) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``names`` need, recursively (markers evaluated, no extras)."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = list(names)
    while pending:
        name = pending.pop()
        key = name.lower().replace("_", "-")
        if key in found:
            continue
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found[key] = distribution
        for requirement in map(Requirement, distribution.requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return list(found.values())


def _link_reused(folder: Path) -> None:
    folder.mkdir()
    for distribution in _closure(REUSED):
        top_levels = {file.parts[0] for file in distribution.files or [] if file.parts[0] != ".."}
        for name in top_levels - NOT_REUSED:
            source = Path(distribution.locate_file(name))
            if name.endswith(".pth") or not source.exists() or (folder / name).exists():
                continue
            (folder / name).symlink_to(source)


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("fresh")
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    site_packages = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    _link_reused(root / "reused")
    (site_packages / "adcore_reused_torch.pth").write_text(f"{root / 'reused'}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "ADCORE_", "VIRTUAL_ENV", "PIP_REQUIRE"))}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    return python, env


def _run(env: tuple[Path, dict[str, str]], *args: str, cwd: Path | None = None) -> str:
    python, variables = env
    result = subprocess.run([python, *args], env=variables, cwd=cwd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def test_fresh_environment_scaffolded_and_example_plugins(fresh_env, tmp_path, bottle_dir):
    python = fresh_env[0]
    # adcore itself and the SDK, built from their packages (not editable), with the weights plugin.
    _run(
        fresh_env,
        "-m",
        "pip",
        "install",
        "--quiet",
        str(ROOT / "core"),
        str(ROOT / "sdk"),
        str(ROOT / "plugins" / "weights-efficientnet-lite"),
    )
    assert "torch" not in _run(fresh_env, "-m", "pip", "list", "--path", str(python.parent.parent)).lower().split()

    # Nothing but the weights provider is installed yet: the stranger's view.
    listed = json.loads(_run(fresh_env, "-m", "adcore", "list-plugins", "--json"))["plugins"]
    assert {plugin["name"] for plugin in listed} == {"weights-efficientnet-lite"}

    # Scaffold, install editable, discover.
    _run(fresh_env, "-m", "adcore_sdk.cli", "new", "mean-distance", "--directory", str(tmp_path))
    package = tmp_path / "adcore-mean-distance"
    _run(fresh_env, "-m", "pip", "install", "--quiet", "-e", str(package), str(EXAMPLE))
    listed = {
        plugin["name"]: plugin
        for plugin in json.loads(_run(fresh_env, "-m", "adcore", "list-plugins", "--json"))["plugins"]
    }
    assert listed["mean-distance"]["detectors"] == ["mean-distance"] and listed["mean-distance"]["error"] is None
    assert listed["pixel-zscore"]["detectors"] == ["pixel-zscore"] and listed["pixel-zscore"]["error"] is None

    # The generated package passes its own tests (the conformance kit arrives through pytest11).
    output = _run(fresh_env, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package / "tests"), cwd=package)
    assert " passed" in output and "failed" not in output

    # Both fit the real data from the command line and produce metrics.
    for model in ("mean-distance", "pixel-zscore"):
        run = tmp_path / f"run-{model}"
        _run(
            fresh_env,
            "-m",
            "adcore",
            "fit",
            "--model",
            model,
            "--data",
            f"mvtec:{bottle_dir}",
            "--output",
            str(run),
            "--no-progress",
        )
        metrics = json.loads((run / "metrics.json").read_text())
        print(model, {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
        assert metrics["image_auroc"] >= 0.9, f"{model}: {metrics}"
        assert (run / "model.safetensors").is_file()
