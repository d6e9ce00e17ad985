"""Resources by id, offline first, never silently replaced by something random.

A resource is anything a detector needs that is not learned from the user's images:
pretrained weights of a timm, torchvision or open_clip architecture, a folder of
texture or natural images, a distilled teacher. Its id reads ``"kind:name"``, e.g.
``"timm:tf_efficientnet_lite0"``, ``"images:textures"``, ``"efficientad:teacher-s"``.

Order, stopping at the first that applies (:func:`resolve_resource`):

1. a path the user names (``--weights FILE``, ``--param penalty_images=DIR``);
2. a provider registered by a plugin through ``adcore_register_resources``;
3. a download, only when the user allows network access (``--allow-download`` or
   ``ADCORE_ALLOW_DOWNLOAD=1``) and the caller knows how to download it;
4. otherwise :class:`ResourceNotFoundError`, which says what to install or pass.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs

ALLOW_DOWNLOAD_ENV = "ADCORE_ALLOW_DOWNLOAD"


class ResourceNotFoundError(RuntimeError):
    """No offline source for a resource, and no download allowed (or possible)."""


@runtime_checkable
class ResourceProvider(Protocol):
    """Serves resources by id without network access."""

    #: Short name shown by ``adcore list-plugins``.
    name: str

    def resources(self) -> list[str]:
        """Ids this provider can serve now (e.g. ``["timm:tf_efficientnet_lite0"]``)."""
        ...

    def fetch(self, resource_id: str) -> Any:
        """The resource: a ``state_dict`` for weights, a ``Path`` for files and folders."""
        ...


@attrs.frozen
class ResolvedResource:
    """A resource and where it came from (recorded in checkpoints and reports)."""

    resource_id: str
    source: str  # "path:<path>" | "provider:<name>" | "download"
    value: Any = None
    provider: Any = None


def download_allowed(allow_download: bool | None = None) -> bool:
    if allow_download is not None:
        return allow_download
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").lower() in {"1", "true", "yes"}


def resolve_resource(
    resource_id: str,
    path: str | os.PathLike | None = None,
    *,
    load_path: Callable[[Path], Any] | None = None,
    download: Callable[[], Any] | None = None,
    allow_download: bool | None = None,
    hint: str = "",
    registry: Any = None,
) -> ResolvedResource:
    """Find ``resource_id`` in the documented order.

    ``load_path`` turns a user's path into the value (default: the ``Path``, which must
    exist); ``download`` fetches it from the network when allowed; ``hint`` completes the
    error message (which plugin to install, which parameter names a path).
    """
    if path is not None and str(path) != "":
        path = Path(path)
        if not path.exists():
            raise ResourceNotFoundError(f"{path}: {resource_id} not found at this path")
        return ResolvedResource(resource_id, f"path:{path}", load_path(path) if load_path else path)
    if registry is None:
        from adcore.plugins import get_registry

        registry = get_registry()
    provider = registry.resource_provider_for(resource_id)
    if provider is not None:
        return ResolvedResource(resource_id, f"provider:{provider.name}", provider.fetch(resource_id), provider)
    if download is not None and download_allowed(allow_download):
        return ResolvedResource(resource_id, "download", download())
    available = sorted(r for r in registry.resource_ids() if r.split(":")[0] == resource_id.split(":")[0])
    options = [hint] if hint else []
    if download is not None:
        options.append(f"allow downloads (--allow-download or {ALLOW_DOWNLOAD_ENV}=1)")
    raise ResourceNotFoundError(
        f"no offline source for '{resource_id}'. "
        + (f"Options: {'; '.join(options)}. " if options else "")
        + f"Offline {resource_id.split(':')[0]} resources available now: {', '.join(available) or 'none'}"
    )
