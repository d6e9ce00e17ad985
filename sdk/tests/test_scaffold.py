"""``adcore-sdk new``: names, refusals, and a generated package that is complete."""

import ast

import pytest
from adcore_sdk.cli import main
from adcore_sdk.scaffold import PluginNames, create_plugin


def test_names_derive_from_the_detector_name():
    names = PluginNames.from_name("texture-knn2")
    assert (names.detector, names.distribution, names.module, names.class_name) == (
        "texture-knn2",
        "adcore-texture-knn2",
        "adcore_texture_knn2",
        "TextureKnn2",
    )


@pytest.mark.parametrize("bad", ["Texture", "2d-flow", "my_plugin", "a--b", "trailing-", "", "ünïcode"])
def test_invalid_names_are_refused_with_the_rule(bad):
    with pytest.raises(ValueError, match="lowercase letters, digits and single hyphens"):
        PluginNames.from_name(bad)


def test_generated_package_is_complete_and_has_no_placeholders(tmp_path):
    package = create_plugin("edge-energy", tmp_path)
    files = sorted(p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "pyproject.toml",
        "src/adcore_edge_energy/__init__.py",
        "src/adcore_edge_energy/model.py",
        "src/adcore_edge_energy/plugin.py",
        "tests/test_adcore_edge_energy_conformance.py",
        "tests/test_adcore_edge_energy_model.py",
    ]
    for path in package.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "__DETECTOR__" not in text and "__MODULE__" not in text and "__CLASS__" not in text, path
            if path.suffix == ".py":
                ast.parse(text, filename=str(path))  # valid Python
    pyproject = (package / "pyproject.toml").read_text()
    assert '[project.entry-points.adcore]\nedge-energy = "adcore_edge_energy.plugin"' in pyproject
    assert 'name = "adcore-edge-energy"' in pyproject
    assert 'name = "edge-energy"' in (package / "src/adcore_edge_energy/model.py").read_text()


def test_existing_folder_is_never_overwritten(tmp_path, capsys):
    package = create_plugin("edge-energy", tmp_path)
    (package / "README.md").write_text("my notes")
    assert main(["new", "edge-energy", "--directory", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (package / "README.md").read_text() == "my notes"
    assert main(["new", "Bad_Name", "--directory", str(tmp_path)]) == 2
    assert not list(tmp_path.glob(".adcore-sdk-*"))  # no staging leftovers
