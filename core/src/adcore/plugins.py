"""Plugin discovery and the registries of detectors and resource providers.

Discovery order: entry points of group ``adcore`` sorted by distribution then entry-point
name, then plugins added in code with :meth:`PluginRegistry.add_plugin`. The environment
variable ``ADCORE_LOAD_PLUGINS`` restricts loading to a comma-separated list of
entry-point names (empty string: none). A plugin that fails to import (``SystemExit``
included), declares an incompatible ``ADCORE_API``, reuses an entry-point name another
distribution already took, or raises while registering is recorded with its error and
skipped; everything else keeps working.

Nothing here imports torch: detectors are registered as cards and imported on first use.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import traceback
from collections.abc import Callable
from typing import Any

import attrs
import pluggy
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from adcore import API_VERSION, hookspecs
from adcore.card import DetectorCard, card_of_class

ENTRY_POINT_GROUP = "adcore"
LOAD_PLUGINS_ENV = "ADCORE_LOAD_PLUGINS"
#: What a plugin may raise at import or registration without taking the host down.
PLUGIN_FAILURES = (Exception, SystemExit)


class PluginError(RuntimeError):
    """A detector or provider is unavailable because of a plugin problem."""


@attrs.define
class PluginInfo:
    """What ``adcore list-plugins`` shows for one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    detectors: list[str] = attrs.Factory(list)
    resource_providers: list[str] = attrs.Factory(list)
    error: str | None = None


@attrs.define
class LazyProvider:
    """A resource provider registered by name: its class is imported on first ``fetch``."""

    name: str
    target: str  # "package.module:Class"
    resource_ids: list[str]
    _instance: Any = None

    def resources(self) -> list[str]:
        return list(self.resource_ids)

    def load(self) -> Any:
        if self._instance is None:
            module_name, _, attribute = self.target.partition(":")
            self._instance = getattr(importlib.import_module(module_name), attribute)()
        return self._instance

    def fetch(self, resource_id: str) -> Any:
        return self.load().fetch(resource_id)

    def __getattr__(self, attribute: str) -> Any:  # normalization() and other optional extras
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return getattr(self.load(), attribute)


@attrs.define
class _TimmWeightsProvider:
    """An API 1 weight provider served as ``"timm:<architecture>"`` resources."""

    provider: Any

    @property
    def name(self) -> str:
        return self.provider.name

    def resources(self) -> list[str]:
        return [f"timm:{a}" for a in self.provider.architectures()]

    def fetch(self, resource_id: str) -> Any:
        return self.provider.state_dict(resource_id.removeprefix("timm:"))

    def normalization(self, resource_id: str) -> Any:
        return self.provider.normalization(resource_id.removeprefix("timm:"))


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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}) raised while loading"
    return f"{type(exc).__name__}: {exc}"


class PluginRegistry:
    """Loads plugins once and answers "which detectors / resources exist"."""

    def __init__(self, load_entry_points: bool = True, only: list[str] | None = None) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        #: Registered detectors by name, as cards (the class is imported by ``detector_class``).
        self.detectors: dict[str, DetectorCard] = {}
        self.resource_providers: dict[str, Any] = {}
        self._classes: dict[str, type] = {}
        self._detector_owner: dict[str, str] = {}
        #: (detector, plugin) -> (card, class or None): what each plugin registered, to undo a clash.
        self._registered: dict[tuple[str, str], tuple[DetectorCard, type | None]] = {}
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
            distribution = ep.dist.name if ep.dist else None
            info = PluginInfo(name=ep.name, distribution=distribution, version=ep.dist.version if ep.dist else None)
            if ep.name in self.plugins:
                # Two distributions declare one entry-point name: keep the first, name the second.
                info.name = f"{ep.name} ({distribution})"
                info.error = (
                    f"PluginError: entry point '{ep.name}' of {distribution} is already taken by "
                    f"{self.plugins[ep.name].distribution}; not loaded"
                )
                self.plugins[info.name] = info
                continue
            try:
                module = ep.load()
                _check_api(module)
            except PLUGIN_FAILURES as exc:  # a broken plugin must not break the host
                info.error = _describe(exc)
                self.plugins[ep.name] = info
                continue
            self._register(module, info)

    def add_plugin(self, plugin: Any, name: str, version: str | None = None) -> PluginInfo:
        """Register a plugin object or module in code (tests, notebooks, applications)."""
        info = PluginInfo(name=name, distribution=None, version=version)
        if name in self.plugins:
            raise PluginError(f"a plugin named '{name}' is already registered")
        try:
            _check_api(plugin)
        except PluginError as exc:
            info.error = f"PluginError: {exc}"
            self.plugins[name] = info
            return info
        self._register(plugin, info)
        return info

    def _register(self, plugin: Any, info: PluginInfo) -> None:
        self.plugins[info.name] = info
        try:
            self.manager.register(plugin, name=info.name)
        except PLUGIN_FAILURES as exc:
            info.error = _describe(exc)
            return
        self._call(info, "adcore_register_detectors", self._detector_registrar(info))
        self._call(info, "adcore_register_resources", self._resource_registrar(info))
        self._call(info, "adcore_register_weights", self._resource_registrar(info, legacy=True))
        if info.error:
            self._withdraw(info)

    def _withdraw(self, info: PluginInfo) -> None:
        """A plugin that failed while registering contributes nothing, not half of itself."""
        for name in info.detectors:
            if self._detector_owner.get(name) == info.name:
                self.detectors.pop(name, None)
                self._classes.pop(name, None)
                self._detector_owner.pop(name, None)
            owners = self.clashes.get(name)
            if owners and info.name in owners:  # its half of a clash goes too
                owners.remove(info.name)
                if len(owners) == 1:
                    survivor = owners[0]
                    del self.clashes[name]
                    if (name, survivor) in self._registered:
                        self.detectors[name], detector_class = self._registered[(name, survivor)]
                        self._detector_owner[name] = survivor
                        if detector_class is not None:
                            self._classes[name] = detector_class
        for name in info.resource_providers:
            self.resource_providers.pop(name, None)
        info.detectors, info.resource_providers = [], []

    def _call(self, info: PluginInfo, hook_name: str, register: Callable[[Any], None]) -> None:
        """Call one plugin's implementation of a hook, isolating its failures."""
        for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
            if impl.plugin_name != info.name:
                continue
            try:
                impl.function(register=register)
            except PLUGIN_FAILURES as exc:
                info.error = f"{_describe(exc)} (in {hook_name})\n{traceback.format_exc(limit=3)}"

    def _detector_registrar(self, info: PluginInfo) -> Callable[[Any], None]:
        def register(entry: Any) -> None:
            if isinstance(entry, DetectorCard):
                card, detector_class = entry, None
            elif isinstance(entry, type) and getattr(entry, "name", ""):
                card, detector_class = card_of_class(entry), entry
            else:
                raise PluginError(f"register() takes a DetectorCard or a detector class with a 'name', got {entry!r}")
            name = card.name
            self._registered[(name, info.name)] = (card, detector_class)
            if name in self.detectors or name in self.clashes:
                owners = self.clashes.setdefault(name, [self._detector_owner.get(name, "?")])
                owners.append(info.name)
                self.detectors.pop(name, None)
                self._classes.pop(name, None)
            else:
                self.detectors[name] = card
                self._detector_owner[name] = info.name
                if detector_class is not None:
                    self._classes[name] = detector_class
            info.detectors.append(name)

        return register

    def _resource_registrar(self, info: PluginInfo, legacy: bool = False) -> Callable[[Any], None]:
        def register(provider: Any) -> None:
            if legacy:
                provider = _TimmWeightsProvider(provider)
            if provider.name in self.resource_providers:
                raise PluginError(f"resource provider '{provider.name}' is already registered by another plugin")
            self.resource_providers[provider.name] = provider
            info.resource_providers.append(provider.name)

        return register

    # -- queries -------------------------------------------------------------------------
    def card(self, name: str) -> DetectorCard:
        self._check_known(name)
        return self.detectors[name]

    def _check_known(self, name: str) -> None:
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

    def detector_class(self, name: str) -> type:
        """The detector's class, imported on first use; an import failure names the plugin."""
        self._check_known(name)
        if name not in self._classes:
            plugin = self.plugin_of(name)
            try:
                self._classes[name] = self.detectors[name].load()
            except PLUGIN_FAILURES as exc:
                where = f"{plugin.name} ({plugin.distribution} {plugin.version})" if plugin else "its plugin"
                raise PluginError(f"detector '{name}' of {where} cannot be loaded: {_describe(exc)}") from None
        return self._classes[name]

    def plugin_of(self, detector_name: str) -> PluginInfo | None:
        owner = self._detector_owner.get(detector_name)
        return self.plugins.get(owner) if owner else None

    def resource_ids(self) -> list[str]:
        ids = []
        for provider in self.resource_providers.values():
            try:
                ids += provider.resources()
            except PLUGIN_FAILURES:
                continue
        return ids

    def resource_provider_for(self, resource_id: str) -> Any | None:
        for provider in self.resource_providers.values():
            try:
                if resource_id in provider.resources():
                    return provider
            except PLUGIN_FAILURES:  # a broken provider serves nothing; the others still do
                continue
        return None

    # API 1 names
    @property
    def weight_providers(self) -> dict[str, Any]:
        return self.resource_providers

    def weight_provider_for(self, architecture: str) -> Any | None:
        return self.resource_provider_for(f"timm:{architecture}")


_default: PluginRegistry | None = None


def get_registry() -> PluginRegistry:
    """The process-wide registry, loaded on first use."""
    global _default
    if _default is None:
        _default = PluginRegistry()
    return _default


def create_detector(
    name: str, seed: int = 0, registry: PluginRegistry | None = None, params: dict | None = None, **overrides: Any
):
    """Build a registered detector by name, its random draws seeded (same seed, same model).

    ``params`` (a dict, e.g. from a command line) and ``overrides`` set fields of the
    detector's ``Config`` (old names are accepted as aliases); unknown names are an error.
    """
    from adcore.seed import seed_everything

    detector_class = (registry or get_registry()).detector_class(name)
    seed_everything(seed)
    return detector_class.from_config_dict({**(params or {}), **overrides})


def set_registry(registry: PluginRegistry | None) -> None:
    """Replace (or with None, reset) the process-wide registry."""
    global _default
    _default = registry
