"""Shared fixtures: synthetic datasets and a clean plugin registry (one torch thread per unit
test comes from the repository's root conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tiny_detectors
from adcore.plugins import LOAD_PLUGINS_ENV, PluginRegistry, set_registry
from helpers import make_mvtec

_ENV_VARS = (LOAD_PLUGINS_ENV, "ADCORE_ALLOW_DOWNLOAD")


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    return make_mvtec(tmp_path / "category")


@pytest.fixture(scope="session")
def shared_mvtec(tmp_path_factory) -> Path:
    """One read-only MVTec layout for tests that only read it."""
    return make_mvtec(tmp_path_factory.mktemp("mvtec") / "category")


# -- plugin registry isolation ------------------------------------------------------------
@pytest.fixture(autouse=True)
def clean_registry():
    """Each test starts and ends with no cached registry and the plugin env vars as they were.

    (``adcore.cli.main`` writes ``os.environ`` directly, so monkeypatch cannot undo it.)
    """
    saved = {name: os.environ.get(name) for name in _ENV_VARS}
    for name in _ENV_VARS:
        os.environ.pop(name, None)
    set_registry(None)
    yield
    set_registry(None)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def tiny_registry() -> PluginRegistry:
    """The installed plugins plus the tiny test detectors, installed as the process registry."""
    registry = PluginRegistry()
    info = registry.add_plugin(tiny_detectors.plugin, name="tiny-test-plugin", version="0.0.1")
    assert info.error is None, info.error
    set_registry(registry)
    return registry
