"""The one place that defines what a plugin can hook into (the plugin API, version 2).

A plugin is a module (or object) exposed under the ``adcore`` entry-point group. It
implements any of the hooks below, decorated with :data:`adcore.hookimpl`. Each hook is
handed a ``register`` callable, so a plugin registers descriptions and the core decides
when to import and instantiate (the pattern of ``llm``'s ``register_models``; hatch's
lazy plugin classes).

Discovery order (documented in ``docs/plugins.md``): plugins named in
``ADCORE_LOAD_PLUGINS`` or all installed entry points, sorted by distribution name;
then plugins added in code with ``PluginRegistry.add_plugin``.

Contracts:

* A hook runs once per process, when the registry loads; it must be cheap and must not
  import torch or model code (``adcore --help`` and ``list-plugins`` stay fast).
* Whatever a hook raises (``SystemExit`` included) disables that plugin only, with the
  error shown by ``adcore list-plugins``; a plugin never contributes half of itself.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT_NAME = "adcore"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def adcore_register_detectors(register: Callable[[object], None]) -> None:
    """Register detectors: call ``register(card)`` once per detector.

    ``card`` is an :class:`adcore.DetectorCard` whose ``target`` names the class
    (``"package.module:Class"``), imported only when the detector is built. Registering the
    class itself (API 1) still works but imports the model module at discovery time.
    """


@hookspec
def adcore_register_resources(register: Callable[[object], None]) -> None:
    """Register resource providers: call ``register(provider)`` per provider.

    ``provider`` follows :class:`adcore.ResourceProvider` (``name``, ``resources()``,
    ``fetch(id)``) or is an :class:`adcore.LazyProvider` naming the class to import on
    first use together with the ids it serves.
    """


@hookspec
def adcore_register_weights(register: Callable[[object], None]) -> None:
    """Deprecated (API 1): register a timm weight provider (``architectures()``,
    ``state_dict(architecture)``, ``normalization(architecture)``). Served as resources
    ``"timm:<architecture>"``; new plugins use ``adcore_register_resources``.
    """
