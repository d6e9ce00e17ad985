"""Settings for every test in the repository (core, plugins, SDK, examples).

Unit tests run with one torch thread: their tensors are tiny, the machine is shared,
and multi-threaded CPU kernels on a busy machine can be many times slower (threads
waiting for each other's time slices). End-to-end tests on real data keep the default.
"""

import pytest
from adcore.threads import torch_threads


@pytest.fixture(autouse=True)
def _single_thread(request):
    if request.node.get_closest_marker("e2e"):
        yield
        return
    with torch_threads(1):
        yield
