"""The real MVTec bottle data, from the path in ADCORE_MVTEC_BOTTLE (set by .ci/run).

Unset: the end-to-end tests are skipped (a user's machine without the data). Set but
missing or incomplete: they fail, so CI cannot silently stop testing on real data.
"""

import os
from pathlib import Path

import pytest

ENV = "ADCORE_MVTEC_BOTTLE"


@pytest.fixture(scope="session")
def bottle_dir() -> Path:
    value = os.environ.get(ENV)
    if not value:
        pytest.skip(f"{ENV} is not set: no real data for end-to-end tests")
    path = Path(value)
    for required in ("train/good", "test/good", "ground_truth"):
        if not (path / required).is_dir():
            pytest.fail(f"{ENV}={path}, but {path / required} does not exist")
    return path
