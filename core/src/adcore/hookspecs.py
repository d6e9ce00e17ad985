"""The one place that defines what a plugin can hook into.

A plugin is a module (or object) exposed under the ``adcore`` entry-point group. It
implements any of the hooks below, decorated with :data:`adcore.hookimpl`. Each hook is
handed a ``register`` callable, so a plugin registers *classes/objects* and the core
decides when to instantiate them (the pattern of ``llm``'s ``register_models``).

Discovery order (documented in ``docs/plugins.md``): plugins named in
``ADCORE_LOAD_PLUGINS`` or all installed entry points, sorted by distribution name;
then plugins added in code with ``PluginRegistry.add_plugin``.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT_NAME = "adcore"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def adcore_register_detectors(register: Callable[[type], None]) -> None:
    """Register detector classes: call ``register(DetectorClass)`` once per class.

    The class must subclass :class:`adcore.detector.AnomalyDetector` and set a unique
    ``name``; it is instantiated by the core with its ``Config``.
    """


@hookspec
def adcore_register_weights(register: Callable[[object], None]) -> None:
    """Register backbone-weight providers: call ``register(provider)`` per provider.

    A provider follows :class:`adcore.backbones.weights.WeightProvider`: it names the timm
    architectures it serves and returns a timm-keyed ``state_dict`` for them, offline.
    """
