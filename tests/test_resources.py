"""Resources by id, offline first: a user's path, then a provider plugin, then a download only
when allowed, else one clear error; and checkpoints that record a large frozen network
instead of copying it."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import torch
from adcore import (
    AnomalyDetector,
    DetectorOutput,
    LazyProvider,
    ResourceNotFoundError,
    hookimpl,
    resolve_resource,
)
from adcore.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from adcore.plugins import PluginRegistry, set_registry
from torch import nn


class TextureProvider:
    name = "textures"

    def __init__(self, folder: Path):
        self.folder = folder
        self.fetched: list[str] = []

    def resources(self):
        return ["images:textures"]

    def fetch(self, resource_id):
        self.fetched.append(resource_id)
        return self.folder


def _registry_with(provider) -> PluginRegistry:
    class Plugin:
        ADCORE_API = ">=2,<3"

        @hookimpl
        def adcore_register_resources(self, register):
            register(provider)

    registry = PluginRegistry(load_entry_points=False)
    info = registry.add_plugin(Plugin(), name="fake-resources")
    assert info.error is None and info.resource_providers == [provider.name]
    return registry


def test_a_path_the_user_names_comes_first(tmp_path):
    provider = TextureProvider(tmp_path / "from-provider")
    registry = _registry_with(provider)
    mine = tmp_path / "mine"
    mine.mkdir()
    resolved = resolve_resource("images:textures", mine, registry=registry)
    assert (resolved.value, resolved.source) == (mine, f"path:{mine}")
    assert provider.fetched == []  # never asked
    with pytest.raises(ResourceNotFoundError, match="not found at this path"):
        resolve_resource("images:textures", tmp_path / "missing", registry=registry)


def test_then_a_provider_then_a_download_only_when_allowed(tmp_path, monkeypatch):
    provider = TextureProvider(tmp_path)
    registry = _registry_with(provider)
    resolved = resolve_resource("images:textures", registry=registry)
    assert (resolved.value, resolved.source) == (tmp_path, "provider:textures")

    downloads = []
    download = lambda: downloads.append(1) or "downloaded"  # noqa: E731
    with pytest.raises(ResourceNotFoundError) as error:
        resolve_resource("images:natural", download=download, hint="pass --param penalty_images=DIR", registry=registry)
    message = str(error.value)
    assert "no offline source for 'images:natural'" in message and "--param penalty_images=DIR" in message
    assert "--allow-download" in message and "images:textures" in message  # what is available instead
    assert downloads == []
    monkeypatch.setenv("ADCORE_ALLOW_DOWNLOAD", "1")
    assert resolve_resource("images:natural", download=download, registry=registry).source == "download"
    assert downloads == [1]


def test_a_lazy_provider_imports_its_class_on_first_fetch(tmp_path, monkeypatch):
    module = tmp_path / "fake_lazy_provider_mod.py"
    module.write_text(
        "LOADED = 0\n"
        "class Provider:\n"
        "    def __init__(self):\n"
        "        global LOADED\n"
        "        LOADED += 1\n"
        "    def fetch(self, resource_id):\n"
        "        return resource_id.upper()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    lazy = LazyProvider("lazy", "fake_lazy_provider_mod:Provider", ["images:lazy"])
    registry = _registry_with(lazy)
    import sys

    assert "fake_lazy_provider_mod" not in sys.modules
    assert resolve_resource("images:lazy", registry=registry).value == "IMAGES:LAZY"
    assert resolve_resource("images:lazy", registry=registry).value == "IMAGES:LAZY"
    assert sys.modules["fake_lazy_provider_mod"].LOADED == 1
    sys.modules.pop("fake_lazy_provider_mod")


def test_api1_weight_providers_are_served_as_timm_resources():
    class OldProvider:
        name = "old"

        def architectures(self):
            return ["resnet18"]

        def state_dict(self, architecture):
            return {"weight": torch.ones(1)}

        def normalization(self, architecture):
            return None

    class OldPlugin:
        @hookimpl
        def adcore_register_weights(self, register):
            register(OldProvider())

    registry = PluginRegistry(load_entry_points=False)
    assert registry.add_plugin(OldPlugin(), name="old-plugin").error is None
    resolved = resolve_resource("timm:resnet18", registry=registry)
    assert resolved.source == "provider:old" and torch.equal(resolved.value["weight"], torch.ones(1))


# -- checkpoints that record a frozen network instead of copying it ---------------------------
@attrs.define
class RecorderConfig:
    image_size: tuple[int, int] = (16, 16)
    weights: str = ""


class FrozenEncoder(nn.Module):
    def __init__(self, state: dict):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.conv.load_state_dict(state)
        self.requires_grad_(False)

    def forward(self, images):
        return self.conv(images)


class Recorder(AnomalyDetector):
    """WinCLIP's shape: a large frozen network from a resource, plus a little learned state."""

    name = "resource-recorder"
    Config = RecorderConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        resolved = resolve_resource(
            "weights:tiny-encoder", self.config.weights or None, load_path=lambda p: torch.load(p, weights_only=True)
        )
        self.encoder_source = resolved.source
        self.encoder = FrozenEncoder(resolved.value)
        self.register_buffer("reference", torch.empty(0))

    def external_modules(self):
        return {"encoder": self.encoder_source}

    def fit_batch(self, batch):
        self.reference = self.encoder(batch.image).mean(dim=0)

    def forward(self, images):
        return DetectorOutput.from_map((self.encoder(images) - self.reference).square().mean(dim=1, keepdim=True))


def test_a_checkpoint_records_external_weights_and_resolves_them_again(tmp_path):
    weights = tmp_path / "encoder.pt"
    torch.manual_seed(0)
    torch.save(nn.Conv2d(3, 4, 1).state_dict(), weights)

    class Plugin:
        ADCORE_API = ">=2,<3"

        @hookimpl
        def adcore_register_detectors(self, register):
            register(Recorder)

    registry = PluginRegistry(load_entry_points=False)
    registry.add_plugin(Plugin(), name="recorder-plugin")
    set_registry(registry)
    detector = Recorder(weights=str(weights))
    from adcore import Batch

    images = torch.rand(2, 3, 16, 16)
    detector.fit_batch(Batch(image=images, path=["a", "b"]))
    detector.is_fitted.fill_(True)
    path = save_checkpoint(detector, tmp_path / "model.safetensors")

    metadata = read_metadata(path)
    assert metadata["external_modules"] == {"encoder": f"path:{weights}"}
    import safetensors

    with safetensors.safe_open(str(path), framework="pt") as handle:
        assert not [k for k in handle.keys() if k.startswith("encoder.")]  # not copied
        assert "reference" in handle.keys()

    restored, _ = load_checkpoint(path, registry=registry)
    assert torch.equal(restored.encoder.conv.weight, detector.encoder.conv.weight)  # resolved again
    assert torch.equal(restored.predict(images).pred_score, detector.predict(images).pred_score)

    weights.unlink()  # the resource is gone: a clear error, not random weights
    with pytest.raises(Exception, match="not found at this path"):
        load_checkpoint(path, registry=registry)
