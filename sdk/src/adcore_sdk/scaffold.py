"""``adcore-sdk new NAME``: write a complete plugin package from the bundled template.

The template (``adcore_sdk/template``) is a working plugin: a hatchling
``pyproject.toml`` with the ``adcore`` entry point, a baseline detector that really
detects (distance to the mean training feature), a README, and tests that run the
conformance kit. Placeholders in file names and contents are replaced by the names
derived from NAME; the package appears in ``adcore list-plugins`` after ``pip install -e``.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import attrs

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
TEMPLATE_SUFFIX = ".tmpl"


@attrs.frozen
class PluginNames:
    """The names one plugin needs, all derived from the detector name."""

    detector: str  # my-detector: what users type (adcore fit --model my-detector)
    distribution: str  # adcore-my-detector: what pip installs
    module: str  # adcore_my_detector: the import package
    class_name: str  # MyDetector

    @classmethod
    def from_name(cls, name: str) -> PluginNames:
        if not NAME_PATTERN.match(name):
            raise ValueError(
                f"invalid plugin name {name!r}: use lowercase letters, digits and single hyphens, "
                "starting with a letter (e.g. 'texture-knn')"
            )
        words = name.split("-")
        return cls(
            detector=name,
            distribution=f"adcore-{name}",
            module="adcore_" + "_".join(words),
            class_name="".join(word.capitalize() for word in words),
        )

    def substitute(self, text: str) -> str:
        for placeholder, value in (
            ("__DETECTOR__", self.detector),
            ("__DIST__", self.distribution),
            ("__MODULE__", self.module),
            ("__CLASS__", self.class_name),
        ):
            text = text.replace(placeholder, value)
        return text


def create_plugin(name: str, directory: str | Path = ".") -> Path:
    """Write the package ``<directory>/adcore-<name>/`` and return its path.

    Refuses to touch an existing path. The files are written into a temporary folder
    first and moved into place at the end, so a failure leaves nothing half-written.
    """
    names = PluginNames.from_name(name)
    directory = Path(directory)
    target = directory / names.distribution
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose another name or directory")
    directory.mkdir(parents=True, exist_ok=True)
    template = resources.files("adcore_sdk") / "template"
    with tempfile.TemporaryDirectory(dir=directory, prefix=".adcore-sdk-") as staging:
        staging_root = Path(staging) / names.distribution
        _render(template, staging_root, names)
        shutil.move(str(staging_root), str(target))
    return target


def _render(source, destination: Path, names: PluginNames) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir(), key=lambda e: e.name):
        if entry.name == "__pycache__":
            continue
        rendered_name = names.substitute(entry.name)
        if entry.is_dir():
            _render(entry, destination / rendered_name, names)
        elif rendered_name.endswith(TEMPLATE_SUFFIX):
            path = destination / rendered_name[: -len(TEMPLATE_SUFFIX)]
            path.write_text(names.substitute(entry.read_text(encoding="utf-8")), encoding="utf-8")
