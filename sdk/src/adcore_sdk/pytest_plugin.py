"""The conformance kit's pytest plugin (entry point ``pytest11``: loaded by pytest wherever
adcore-sdk is installed): the tiny synthetic dataset the checks fit on, and a report header
naming the adcore version and the installed plugins."""

from __future__ import annotations

from pathlib import Path

import pytest

#: Side of the synthetic images; the white-square defects are about a quarter of it.
CONFORMANCE_IMAGE_SIZE = 128


@pytest.fixture(scope="session")
def adcore_conformance_data(tmp_path_factory) -> Path:
    """A tiny MVTec AD layout: 16 normal training images, 6 normal and 6 defective test
    images with masks (smooth textures; defects are saturated white squares)."""
    from adcore.data.synthetic import make_mvtec

    root = tmp_path_factory.mktemp("adcore-conformance") / "synthetic"
    return make_mvtec(root, n_train=16, n_good=6, n_bad=6, defect="white_square", size=CONFORMANCE_IMAGE_SIZE)


def pytest_report_header(config) -> list[str]:
    import adcore
    from adcore.plugins import PluginRegistry

    registry = PluginRegistry()
    plugins = ", ".join(
        f"{name} {info.version or ''}".strip() + (" (BROKEN)" if info.error else "")
        for name, info in registry.plugins.items()
    )
    return [f"adcore {adcore.__version__} (plugin API {adcore.API_VERSION}); plugins: {plugins or 'none'}"]
