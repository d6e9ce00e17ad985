"""Settings for every test in the repository (core, plugins, SDK, examples).

Unit tests run with one torch thread: their tensors are tiny, the machine is shared,
and multi-threaded CPU kernels on a busy machine can be many times slower (threads
waiting for each other's time slices). End-to-end tests on real data keep the default.

``shared_dataset("imagenet_samples")`` gives a folder of the real data beside the repository
(``ADCORE_DATASETS``, set by ``.ci/run``): skipped when the variable is unset (a user's
machine without the data), a failure when it is set but the folder is missing.
"""

import os
from pathlib import Path

import pytest
from adcore.threads import torch_threads

DATASETS_ENV = "ADCORE_DATASETS"


@pytest.fixture(autouse=True)
def _single_thread(request):
    if request.node.get_closest_marker("e2e"):
        yield
        return
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def shared_dataset():
    """A function: ``shared_dataset(name)`` -> the folder ``$ADCORE_DATASETS/name``."""

    def resolve(name: str) -> Path:
        root = os.environ.get(DATASETS_ENV)
        if not root:
            pytest.skip(f"{DATASETS_ENV} is not set: no real data for this test")
        path = Path(root) / name
        if not path.is_dir():
            pytest.fail(f"{DATASETS_ENV}={root}, but {path} does not exist")
        return path

    return resolve
