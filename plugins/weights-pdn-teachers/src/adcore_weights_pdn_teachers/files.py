"""Which teacher files ship inside the package (no torch import: read at discovery)."""

from __future__ import annotations

from pathlib import Path

#: the folder holding ``<name>.safetensors`` for every teacher
TEACHERS = Path(__file__).parent / "teachers"
NAMES = ("pdn_small", "pdn_medium")


def shipped_teachers() -> list[str]:
    """Teacher names whose file is present."""
    return [name for name in NAMES if (TEACHERS / f"{name}.safetensors").is_file()]
