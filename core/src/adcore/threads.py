"""A context with a fixed number of torch CPU threads.

Tiny workloads (unit tests, conformance checks) run fastest on one thread, and a fixed
thread count keeps float reductions in one order, so two runs compare bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
