"""The hook reference in docs/plugins.md covers every hookspec, with its signature."""

import inspect
from pathlib import Path

from adcore import hookspecs

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def test_every_hookspec_is_documented_with_its_signature():
    text = DOC.read_text()
    specs = [
        (name, function)
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(function, "adcore_spec")
    ]
    assert {name for name, _ in specs} == {"adcore_register_detectors", "adcore_register_resources", "adcore_register_weights"}
    for name, function in specs:
        parameters = ", ".join(
            f"{p.name}: {p.annotation}" for p in inspect.signature(function).parameters.values()
        ).replace("typing.", "")
        assert f"### `{name}(" in text, f"{name} is missing from docs/plugins.md"
        assert f"### `{name}({parameters}) -> None`" in text, f"docs/plugins.md has a stale signature for {name}"
