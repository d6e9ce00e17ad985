"""Plugin discovery through real entry points, with broken, refused and clashing plugins.

Each fake plugin is a real installed distribution: a ``NAME-VERSION.dist-info`` folder
(METADATA + entry_points.txt with an ``[adcore]`` group) and a module, on ``sys.path``.
"""

import sys
import textwrap
import uuid

import pytest
from adcore.data import AnomalyDataset, load_data
from adcore.engine import Engine
from adcore.plugins import LOAD_PLUGINS_ENV, PluginError, PluginRegistry, get_registry, set_registry

GOOD = """
    from adcore import hookimpl
    import tiny_detectors

    ADCORE_API = ">=1,<3"

    @hookimpl
    def adcore_register_detectors(register):
        register(tiny_detectors.named("{detector}"))
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    """Install fake distributions into a folder on sys.path; forget their modules afterwards."""
    modules = []

    def install(dist: str, entry_point: str, source: str, version: str = "0.1", **fmt) -> str:
        module = f"fake_adcore_plugin_{uuid.uuid4().hex[:8]}"
        modules.append(module)
        info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[adcore]\n{entry_point} = {module}\n")
        (tmp_path / f"{module}.py").write_text(
            textwrap.dedent(source.format(**fmt)) if fmt else textwrap.dedent(source)
        )
        return module

    monkeypatch.syspath_prepend(str(tmp_path))
    yield install
    for module in modules:
        sys.modules.pop(module, None)


def test_discovers_a_plugin_from_its_entry_point(site, mvtec_root):
    site("fake-good", "fake-good", GOOD, version="0.3", detector="fake-det")
    registry = PluginRegistry()
    info = registry.plugins["fake-good"]
    assert info.error is None
    assert (info.distribution, info.version, info.detectors) == ("fake-good", "0.3", ["fake-det"])
    assert registry.plugin_of("fake-det") is info
    assert {"padim", "stfpm", "weights-efficientnet-lite"} <= set(registry.plugins)  # installed ones too

    # The discovered detector really works end to end.
    detector = registry.detector_class("fake-det")()
    splits = load_data(f"mvtec:{mvtec_root}")
    engine = Engine(device="cpu", progress=False)
    engine.fit(detector, AnomalyDataset(splits.train, detector.input_spec))
    predictions = engine.predict(detector, AnomalyDataset(splits.test, detector.input_spec))
    assert predictions.scores.shape == (8,) and predictions.maps.shape == (8, 1, 64, 64)
    assert predictions.scores[4:].min() > predictions.scores[:4].max()  # bright squares stand out


def test_broken_plugins_are_reported_and_the_rest_works(site):
    site("fake-good", "fake-good", GOOD, detector="fake-det")
    site("fake-broken-import", "fake-broken-import", "raise ImportError('needs libfoo 3')\n")
    site(
        "fake-broken-hook",
        "fake-broken-hook",
        """
        import tiny_detectors
        from adcore import hookimpl

        @hookimpl
        def adcore_register_detectors(register):
            register(tiny_detectors.named("half-registered"))
            raise RuntimeError("model zoo offline")
        """,
    )
    registry = PluginRegistry()
    broken_import = registry.plugins["fake-broken-import"].error
    assert broken_import.startswith("ImportError") and "needs libfoo 3" in broken_import
    broken_hook = registry.plugins["fake-broken-hook"].error
    assert "RuntimeError: model zoo offline (in adcore_register_detectors)" in broken_hook
    assert registry.plugins["fake-good"].error is None
    assert registry.detector_class("fake-det").name == "fake-det"
    assert registry.detector_class("padim").name == "padim"
    with pytest.raises(PluginError) as info:
        registry.detector_class("missing-model")
    message = str(info.value)
    assert "fake-det" in message and "padim" in message  # the installed list
    assert "fake-broken-import" in message and "fake-broken-hook" in message  # and what failed


def test_load_plugins_env_restricts_loading(site, monkeypatch):
    site("fake-good", "fake-good", GOOD, detector="fake-det")
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "")
    none = PluginRegistry()
    assert none.plugins == {} and none.detectors == {}

    monkeypatch.setenv(LOAD_PLUGINS_ENV, "fake-good")
    only = PluginRegistry()
    assert set(only.plugins) == {"fake-good"} and set(only.detectors) == {"fake-det"}

    monkeypatch.setenv(LOAD_PLUGINS_ENV, " fake-good , padim ")
    two = PluginRegistry()
    assert set(two.plugins) == {"fake-good", "padim"}

    # An explicit list wins over the environment.
    assert set(PluginRegistry(only=["stfpm"]).plugins) == {"stfpm"}


def test_incompatible_api_is_refused_naming_the_version(site):
    site(
        "fake-future",
        "fake-future",
        GOOD.replace('ADCORE_API = ">=1,<3"', 'ADCORE_API = ">=3"'),
        detector="future-det",
    )
    site("fake-invalid-api", "fake-invalid-api", GOOD.replace('">=1,<3"', '"one or two"'), detector="odd-det")
    registry = PluginRegistry()
    error = registry.plugins["fake-future"].error
    assert error is not None and ">=3" in error and "provides API 2" in error
    assert "future-det" not in registry.detectors
    assert "invalid ADCORE_API" in registry.plugins["fake-invalid-api"].error
    assert "odd-det" not in registry.detectors


def test_add_plugin_checks_the_api_too():
    class Future:
        ADCORE_API = ">=3"

    registry = PluginRegistry(load_entry_points=False)
    info = registry.add_plugin(Future(), name="future")
    assert "needs adcore plugin API >=3" in info.error
    assert registry.plugins["future"] is info


def test_two_plugins_with_one_detector_name_clash(site):
    site("fake-alpha", "fake-alpha", GOOD, detector="same-det")
    site("fake-beta", "fake-beta", GOOD, detector="same-det")
    site("fake-good", "fake-good", GOOD, detector="fake-det")
    registry = PluginRegistry()
    with pytest.raises(PluginError) as info:
        registry.detector_class("same-det")
    message = str(info.value)
    assert "fake-alpha" in message and "fake-beta" in message and LOAD_PLUGINS_ENV in message
    assert registry.clashes == {"same-det": ["fake-alpha", "fake-beta"]}
    assert registry.detector_class("fake-det").name == "fake-det"  # others unaffected

    # Restricting loading resolves it.
    assert PluginRegistry(only=["fake-beta"]).detector_class("same-det").name == "same-det"


def test_process_registry_is_cached_and_resettable():
    first = get_registry()
    assert get_registry() is first
    set_registry(None)
    assert get_registry() is not first
    mine = PluginRegistry(load_entry_points=False)
    set_registry(mine)
    assert get_registry() is mine


LAZY = """
    from adcore import DetectorCard, hookimpl

    ADCORE_API = ">=2,<3"

    @hookimpl
    def adcore_register_detectors(register):
        register(DetectorCard(name="{detector}", target="{module}:Lazy", summary="a lazy one", training_kind="fit_once"))
"""

LAZY_MODEL = """
    import tiny_detectors

    LOADED = True

    class Lazy(tiny_detectors.TinyMean):
        name = "{detector}"
"""


def test_a_card_registers_a_detector_without_importing_its_module(site, tmp_path):
    model = "fake_lazy_model_" + uuid.uuid4().hex[:8]
    (tmp_path / f"{model}.py").write_text(textwrap.dedent(LAZY_MODEL.format(detector="lazy-det")))
    site("fake-lazy", "fake-lazy", LAZY, detector="lazy-det", module=model)
    try:
        registry = PluginRegistry()
        assert registry.plugins["fake-lazy"].error is None
        assert registry.card("lazy-det").summary == "a lazy one"
        assert model not in sys.modules  # registered, not imported
        assert registry.detector_class("lazy-det").name == "lazy-det"
        assert sys.modules[model].LOADED
    finally:
        sys.modules.pop(model, None)


def test_a_card_whose_module_fails_names_its_plugin(site):
    site("fake-lazy", "fake-lazy", LAZY, detector="lazy-det", module="no_such_module_anywhere")
    registry = PluginRegistry()
    assert registry.plugins["fake-lazy"].error is None  # discovery does not import it
    with pytest.raises(PluginError, match=r"detector 'lazy-det' of fake-lazy \(fake-lazy 0.1\) cannot be loaded"):
        registry.detector_class("lazy-det")
    assert registry.detector_class("padim").name == "padim"


def test_a_second_distribution_reusing_an_entry_point_name_is_named_and_skipped(site):
    site("fake-impostor", "padim", GOOD, detector="impostor-det")  # declares an entry point 'padim'
    registry = PluginRegistry()
    impostor = [info for info in registry.plugins.values() if info.distribution == "fake-impostor"]
    assert len(impostor) == 1 and "already taken by adcore-padim" in impostor[0].error
    assert "fake-impostor" in impostor[0].name
    assert registry.detector_class("padim").name == "padim"  # the original still works
    assert registry.plugins["padim"].error is None


def test_a_plugin_that_exits_at_import_is_named_and_skipped(site):
    site("fake-exit", "fake-exit", "import sys\nsys.exit(3)\n")
    site(
        "fake-exit-hook",
        "fake-exit-hook",
        """
        from adcore import hookimpl

        @hookimpl
        def adcore_register_detectors(register):
            raise SystemExit("bye")
        """,
    )
    registry = PluginRegistry()
    assert registry.plugins["fake-exit"].error.startswith("SystemExit(3)")
    assert "SystemExit('bye')" in registry.plugins["fake-exit-hook"].error
    assert registry.detector_class("padim").name == "padim"


def test_list_plugins_survives_hostile_plugins(site, capsys):
    from adcore.cli import main

    site("fake-impostor", "padim", GOOD, detector="impostor-det")
    site("fake-exit", "fake-exit", "import sys\nsys.exit(3)\n")
    set_registry(None)
    try:
        assert main(["list-plugins"]) == 0
    finally:
        set_registry(None)
    out = capsys.readouterr().out
    assert "fake-exit" in out and "SystemExit(3)" in out
    assert "fake-impostor" in out and "already taken" in out
    assert "detector padim" in out
