"""Plugin discovery and the registries of detectors and weight providers.

Discovery order: entry points of group ``adcore`` sorted by distribution then entry-point
name, then plugins added in code with :meth:`PluginRegistry.add_plugin`. The environment
variable ``ADCORE_LOAD_PLUGINS`` restricts loading to a comma-separated list of
entry-point names (empty string: none). A plugin that fails to import, declares an
incompatible ``ADCORE_API`` or raises while registering is recorded with its error and
skipped; everything else keeps working.
"""

from __future__ import annotations

import importlib.metadata
import os
import traceback
from collections.abc import Callable
from typing import Any

import attrs
import pluggy
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from adcore import API_VERSION, hookspecs

ENTRY_POINT_GROUP = "adcore"
LOAD_PLUGINS_ENV = "ADCORE_LOAD_PLUGINS"


class PluginError(RuntimeError):
    """A detector or provider is unavailable because of a plugin problem."""


@attrs.define
class PluginInfo:
    """What ``adcore list-plugins`` shows for one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    detectors: list[str] = attrs.Factory(list)
    weight_providers: list[str] = attrs.Factory(list)
    error: str | None = None


def _check_api(module: Any) -> None:
    required = getattr(module, "ADCORE_API", None)
    if required is None:
        return
    try:
        spec = SpecifierSet(str(required))
    except InvalidSpecifier as exc:
        raise PluginError(f"invalid ADCORE_API {required!r}: {exc}") from None
    if str(API_VERSION) not in spec:
        raise PluginError(f"needs adcore plugin API {required}, this adcore provides API {API_VERSION}")


class PluginRegistry:
    """Loads plugins once and answers "which detectors / weights exist"."""

    def __init__(self, load_entry_points: bool = True, only: list[str] | None = None) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.detectors: dict[str, type] = {}
        self.weight_providers: dict[str, Any] = {}
        self._detector_owner: dict[str, str] = {}
        self.clashes: dict[str, list[str]] = {}
        if load_entry_points:
            self._load_entry_points(only)

    # -- loading -------------------------------------------------------------------------
    def _load_entry_points(self, only: list[str] | None) -> None:
        if only is None and LOAD_PLUGINS_ENV in os.environ:
            only = [n.strip() for n in os.environ[LOAD_PLUGINS_ENV].split(",") if n.strip()]
        entry_points = sorted(
            importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
            key=lambda ep: ((ep.dist.name if ep.dist else ""), ep.name),
        )
        for ep in entry_points:
            if only is not None and ep.name not in only:
                continue
            info = PluginInfo(
                name=ep.name,
                distribution=ep.dist.name if ep.dist else None,
                version=ep.dist.version if ep.dist else None,
            )
            try:
                module = ep.load()
                _check_api(module)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the host
                info.error = f"{type(exc).__name__}: {exc}"
                self.plugins[ep.name] = info
                continue
            self._register(module, info)

    def add_plugin(self, plugin: Any, name: str, version: str | None = None) -> PluginInfo:
        """Register a plugin object or module in code (tests, notebooks, applications)."""
        info = PluginInfo(name=name, distribution=None, version=version)
        try:
            _check_api(plugin)
        except PluginError as exc:
            info.error = f"PluginError: {exc}"
            self.plugins[name] = info
            return info
        self._register(plugin, info)
        return info

    def _register(self, plugin: Any, info: PluginInfo) -> None:
        if info.name in self.plugins:
            raise PluginError(f"a plugin named '{info.name}' is already registered")
        self.plugins[info.name] = info
        try:
            self.manager.register(plugin, name=info.name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the host
            info.error = f"{type(exc).__name__}: {exc}"
            return
        self._call(info, "adcore_register_detectors", self._detector_registrar(info))
        self._call(info, "adcore_register_weights", self._weights_registrar(info))
        if info.error:
            self._withdraw(info)

    def _withdraw(self, info: PluginInfo) -> None:
        """A plugin that failed while registering contributes nothing, not half of itself."""
        for name in info.detectors:
            if self._detector_owner.get(name) == info.name:
                self.detectors.pop(name, None)
                self._detector_owner.pop(name, None)
        for name in info.weight_providers:
            self.weight_providers.pop(name, None)
        info.detectors, info.weight_providers = [], []

    def _call(self, info: PluginInfo, hook_name: str, register: Callable[[Any], None]) -> None:
        """Call one plugin's implementation of a hook, isolating its failures."""
        for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
            if impl.plugin_name != info.name:
                continue
            try:
                impl.function(register=register)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the host
                info.error = f"{type(exc).__name__} in {hook_name}: {exc}\n{traceback.format_exc(limit=3)}"

    def _detector_registrar(self, info: PluginInfo) -> Callable[[type], None]:
        def register(detector_class: type) -> None:
            name = getattr(detector_class, "name", "")
            if not name:
                raise PluginError(f"{detector_class!r} has no 'name'")
            if name in self.detectors or name in self.clashes:
                owners = self.clashes.setdefault(name, [self._detector_owner.get(name, "?")])
                owners.append(info.name)
                self.detectors.pop(name, None)
            else:
                self.detectors[name] = detector_class
                self._detector_owner[name] = info.name
            info.detectors.append(name)

        return register

    def _weights_registrar(self, info: PluginInfo) -> Callable[[Any], None]:
        def register(provider: Any) -> None:
            if provider.name in self.weight_providers:
                raise PluginError(f"weight provider '{provider.name}' is already registered by another plugin")
            self.weight_providers[provider.name] = provider
            info.weight_providers.append(provider.name)

        return register

    # -- queries -------------------------------------------------------------------------
    def detector_class(self, name: str) -> type:
        if name in self.clashes:
            raise PluginError(
                f"detector '{name}' is registered by several plugins: {', '.join(self.clashes[name])}; "
                f"uninstall one or restrict loading with {LOAD_PLUGINS_ENV}"
            )
        if name not in self.detectors:
            known = ", ".join(sorted(self.detectors)) or "none"
            broken = [p.name for p in self.plugins.values() if p.error]
            hint = f"; plugins that failed to load: {', '.join(broken)} (see 'adcore list-plugins')" if broken else ""
            raise PluginError(f"unknown detector '{name}' (installed: {known}){hint}")
        return self.detectors[name]

    def plugin_of(self, detector_name: str) -> PluginInfo | None:
        owner = self._detector_owner.get(detector_name)
        return self.plugins.get(owner) if owner else None

    def weight_provider_for(self, architecture: str) -> Any | None:
        for provider in self.weight_providers.values():
            if architecture in provider.architectures():
                return provider
        return None


_default: PluginRegistry | None = None


def get_registry() -> PluginRegistry:
    """The process-wide registry, loaded on first use."""
    global _default
    if _default is None:
        _default = PluginRegistry()
    return _default


def create_detector(name: str, seed: int = 0, registry: PluginRegistry | None = None, **params: Any):
    """Build a registered detector by name, its random initialisation seeded (same seed, same model).

    ``params`` override fields of the detector's ``Config``; unknown names are an error.
    """
    from adcore.seed import seed_everything

    detector_class = (registry or get_registry()).detector_class(name)
    seed_everything(seed)
    return detector_class.from_config_dict({**attrs.asdict(detector_class.Config()), **params})


def set_registry(registry: PluginRegistry | None) -> None:
    """Replace (or with None, reset) the process-wide registry."""
    global _default
    _default = registry
