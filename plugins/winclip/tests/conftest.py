"""Tiny open_clip models saved as files, loaded by the detector the way a user loads real CLIP
weights (``clip_model=<config .json>``, ``weights=<file>``): see ``adcore_winclip.testing``."""

import pytest
from adcore_winclip.testing import write_tiny_clip


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """Aligned to one concept (white square = 'damaged object'): for tests that must detect."""
    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), aligned=True)


@pytest.fixture(scope="session")
def random_clip(tmp_path_factory):
    """Random weights: for tests of the machinery that need no meaning."""
    return write_tiny_clip(tmp_path_factory.mktemp("random-clip"), aligned=False)
