"""The public API: what plugins may import, what it exports, and that it stays light.

Plugins (ours, the example, the SDK's template) import adcore only as ``adcore`` and
``adcore.components``; everything else is internal. ``import adcore`` and the commands
that only describe (``--version``, ``--help``, ``list-plugins``) import neither torch nor
any model module.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import adcore
import adcore.components
import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = {"adcore", "adcore.components"}
PLUGIN_SOURCES = [
    *sorted(ROOT.glob("plugins/*/src")),
    *sorted(ROOT.glob("docs/examples/*/src")),
    ROOT / "sdk" / "src" / "adcore_sdk" / "template" / "src",
]


def _adcore_imports(path: Path) -> list[tuple[int, str]]:
    text = path.read_text()
    if path.suffix == ".tmpl":
        text = text.replace("__MODULE__", "module").replace("__CLASS__", "Class").replace("__DETECTOR__", "x")
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if name == "adcore" or name.startswith("adcore.")]
    return found


def test_plugins_import_only_the_public_api():
    files = [p for root in PLUGIN_SOURCES for p in root.rglob("*") if p.suffix in (".py", ".tmpl")]
    assert len(files) > 20
    private = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in files
        for line, module in _adcore_imports(path)
        if module not in PUBLIC_MODULES
    ]
    assert not private, "plugins must import adcore only through 'adcore' and 'adcore.components':\n" + "\n".join(
        private
    )


def test_every_public_name_resolves():
    for name in adcore.__all__:
        assert getattr(adcore, name) is not None, name
    for name in adcore.components.__all__:
        assert getattr(adcore.components, name) is not None, name
    with pytest.raises(AttributeError):
        adcore.NoSuchThing  # noqa: B018


def test_api_version_and_the_plugins_that_declare_it():
    assert adcore.API_VERSION == 2
    for plugin in sorted(ROOT.glob("plugins/*/src/*/plugin.py")):
        assert 'ADCORE_API = ">=2,<3"' in plugin.read_text(), plugin


def _python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return result.stdout.strip()


HEAVY = ("torch", "timm", "FrEIA", "adcore_padim.model", "adcore_patchcore.model", "adcore.engine")


@pytest.mark.parametrize(
    "argv",
    [["--version"], ["--help"], ["list-plugins"], ["list-plugins", "--json"]],
    ids=["version", "help", "list-plugins", "list-plugins-json"],
)
def test_describing_commands_import_no_torch_and_no_model(argv):
    code = (
        "import sys, contextlib, io\n"
        "from adcore.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        f"        main({argv!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    assert _python(code) == "[]"


def test_list_plugins_json_shows_every_detector_card():
    listing = json.loads(
        subprocess.run(
            [sys.executable, "-m", "adcore", "list-plugins", "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    cards = listing["detectors"]
    expected = {"padim", "patchcore", "dfkde", "dfm", "stfpm", "cfa", "cflow", "fastflow", "csflow", "uflow"}
    assert expected <= set(cards)
    for name in expected:
        card = cards[name]
        assert card["paper"] and card["paper_url"].startswith("https://"), name
        assert card["training_kind"] in ("fit_once", "gradient") and card["learning_type"] == "one_class"
        assert card["results"]["mvtec_ad/bottle"]["image_auroc"] > 0.9, name


def test_import_adcore_is_light():
    assert _python("import sys, adcore; print('torch' in sys.modules)") == "False"


def test_entry_point_modules_import_no_model_code():
    """A plugin's package ``__init__`` and ``plugin`` module import only ``adcore`` (and light
    siblings): loading the entry points at discovery must not import torch or a model."""
    heavy = {"torch", "timm", "FrEIA", "numpy"}
    offenders = []
    for root in PLUGIN_SOURCES:
        for path in [*root.rglob("__init__.py*"), *root.rglob("plugin.py*")]:
            text = path.read_text().replace("__MODULE__", "module")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.ImportFrom) and node.module:
                    module = node.module
                elif isinstance(node, ast.Import):
                    module = node.names[0].name
                else:
                    continue
                top = module.split(".")[0]
                if top in heavy or module.endswith((".model", ".provider")) or module == "adcore.components":
                    offenders.append(f"{path.relative_to(ROOT)}: {module}")
    assert not offenders, offenders
