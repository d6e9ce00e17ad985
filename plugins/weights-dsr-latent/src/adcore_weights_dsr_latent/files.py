"""Which latent model files ship inside the package (no torch import: read at discovery)."""

from __future__ import annotations

from pathlib import Path

#: the folder holding ``<name>.safetensors``
WEIGHTS = Path(__file__).parent / "weights"
NAMES = ("vq_latent",)


def shipped() -> list[str]:
    """Names whose file is present."""
    return [name for name in NAMES if (WEIGHTS / f"{name}.safetensors").is_file()]
