"""The TorchFX feature extractor: features by graph-node name from timm, torchvision and user networks.

It is checked against the timm extractor (same network, same weights, same stages: equal
tensors), against hand-written forward passes of a torchvision network and of a user's
module, and for its weight rules (file, provider, "none" only on request, checkpoints).
"""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from adcore import FeatureExtractor
from adcore.backbones.feature_extractor import create_feature_extractor
from adcore.backbones.torchfx import TorchFXFeatureExtractor, create_torchfx_extractor, graph_node_names
from adcore.backbones.weights import WeightsNotFoundError, restoring_from_checkpoint
from torch import nn


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """Seeded random timm resnet18 weights in a file: both extractors read the same tensors."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    return path


class TinyNet(nn.Module):
    """A user's network: two strided conv blocks, then a classifier head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.body(self.stem(x))
        return self.head(torch.flatten(x.mean(dim=(2, 3)), 1))


def test_same_features_as_the_timm_extractor_on_the_same_stages(resnet18_file):
    timm_extractor = create_feature_extractor("resnet18", [1, 2, 3], weights=str(resnet18_file))
    stage_nodes = [timm.create_model("resnet18").feature_info[i]["module"] for i in (1, 2, 3)]
    assert stage_nodes == ["layer1", "layer2", "layer3"]
    fx_extractor = create_torchfx_extractor("timm:resnet18", stage_nodes, weights=resnet18_file)
    assert fx_extractor.weights_source == f"file:{resnet18_file}"
    assert fx_extractor.channels == timm_extractor.channels == [64, 128, 256]
    assert fx_extractor.strides == timm_extractor.strides == [4, 8, 16]
    assert (fx_extractor.mean, fx_extractor.std) == (timm_extractor.mean, timm_extractor.std)
    images = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    for fx_map, timm_map in zip(fx_extractor(images), timm_extractor(images), strict=True):
        assert fx_map.shape == timm_map.shape
        assert torch.equal(fx_map, timm_map)


def test_offline_provider_weights_match_the_timm_extractor():
    """'auto' resolves timm:tf_efficientnet_lite0 through the installed provider, as the timm extractor."""
    timm_extractor = create_feature_extractor("tf_efficientnet_lite0", [2, 3], weights="auto")
    fx_extractor = create_torchfx_extractor("timm:tf_efficientnet_lite0", ["blocks.2", "blocks.4"], weights="auto")
    assert fx_extractor.weights_source == timm_extractor.weights_source == "provider:efficientnet-lite"
    assert fx_extractor.mean == timm_extractor.mean == (0.5, 0.5, 0.5)
    assert fx_extractor.channels == timm_extractor.channels and fx_extractor.strides == timm_extractor.strides
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for fx_map, timm_map in zip(fx_extractor(images), timm_extractor(images), strict=True):
        torch.testing.assert_close(fx_map, timm_map, rtol=0, atol=1e-6)


def test_torchvision_network_by_node_name_equals_its_own_forward(tmp_path):
    torch.manual_seed(3)
    reference = torchvision.models.resnet18().eval()
    path = tmp_path / "tv_resnet18.safetensors"
    import safetensors.torch

    safetensors.torch.save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    extractor = create_torchfx_extractor("torchvision:resnet18", ["layer2", "layer3.1.relu_1"], weights=path)
    assert extractor.channels == [128, 256] and extractor.strides == [8, 16]
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(images))))
        layer2 = reference.layer2(reference.layer1(x))
        layer3 = reference.layer3(layer2)
    features = extractor(images)
    torch.testing.assert_close(features[0], layer2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features[1], layer3, rtol=1e-5, atol=1e-5)  # relu_1: the last block's output


def test_user_module_keeps_its_parameters_or_loads_a_file(tmp_path):
    torch.manual_seed(5)
    net = TinyNet().eval()
    assert "body.1" in graph_node_names(net)
    extractor = create_torchfx_extractor(net, ["stem.2", "body.1"], probe_size=32)
    assert isinstance(extractor, FeatureExtractor)
    assert extractor.weights_source == "module"
    assert extractor.channels == [8, 16] and extractor.strides == [2, 4]
    images = torch.randn(3, 3, 32, 48)
    with torch.no_grad():
        stem = net.stem(images)
        expected = [stem, net.body(stem)]
    for got, want in zip(extractor(images), expected, strict=True):
        torch.testing.assert_close(got, want)

    # A file: other weights loaded into a fresh module; the head is not needed and may be absent.
    torch.manual_seed(6)
    other = TinyNet().eval()
    state = {k: v for k, v in other.state_dict().items() if not k.startswith("head.")}
    torch.save(state, tmp_path / "tiny.pt")
    loaded = create_torchfx_extractor(TinyNet(), ["body.1"], weights=tmp_path / "tiny.pt", probe_size=32)
    assert loaded.weights_source == f"file:{tmp_path / 'tiny.pt'}"
    with torch.no_grad():
        torch.testing.assert_close(loaded(images)[0], other.body(other.stem(images)))


def test_frozen_or_trainable():
    frozen = create_torchfx_extractor(TinyNet(), ["body.1"], probe_size=32)
    frozen.train()
    assert not frozen.model.training
    out = frozen(torch.randn(2, 3, 32, 32, requires_grad=True))[0]
    assert not out.requires_grad and all(not p.requires_grad for p in frozen.parameters())

    net = TinyNet()
    running_mean = net.stem[1].running_mean.clone()
    trainable = create_torchfx_extractor(net, ["stem.2", "body.1"], frozen=False, probe_size=32)
    assert torch.equal(net.stem[1].running_mean, running_mean), "the dry run moved batch-norm statistics"
    trainable.train()
    assert trainable.model.training
    trainable(torch.randn(4, 3, 32, 32))[1].square().mean().backward()
    assert net.body[0].weight.grad is not None
    assert not torch.equal(net.stem[1].running_mean, running_mean)  # training mode: statistics move


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="graph_node_names"):
        create_torchfx_extractor(TinyNet(), ["body.7"], probe_size=32)
    with pytest.raises(ValueError, match=r"'head' gives \(1, 5\), not a \(N, C, H, W\)"):
        create_torchfx_extractor(TinyNet(), ["head"], probe_size=32)
    with pytest.raises(ValueError, match="non-empty"):
        create_torchfx_extractor(TinyNet(), [], probe_size=32)
    with pytest.raises(ValueError, match="'timm:NAME', 'torchvision:NAME'"):
        create_torchfx_extractor("resnet18", ["layer1"])
    # No offline source and no download: an error that says what to do, never random weights.
    with pytest.raises(WeightsNotFoundError, match="torchvision:resnet18"):
        create_torchfx_extractor("torchvision:resnet18", ["layer1"], weights="auto", allow_download=False)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        create_torchfx_extractor("torchvision:resnet18", ["layer1"], weights=tmp_path / "missing.pth")
    torch.save({"stem.0.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="missing"):
        create_torchfx_extractor(TinyNet(), ["body.1"], weights=tmp_path / "partial.pt", probe_size=32)


def test_random_weights_only_on_request_and_checkpoint_restores_skip_resolution(tmp_path):
    random = create_torchfx_extractor("torchvision:resnet18", ["layer1"], weights="none")
    assert random.weights_source == "random"
    with restoring_from_checkpoint():  # nothing is read: the checkpoint supplies every tensor
        restored = create_torchfx_extractor("torchvision:resnet18", ["layer1"], weights=tmp_path / "missing.pth")
        restored_module = create_torchfx_extractor(TinyNet(), ["body.1"], weights=tmp_path / "no.pt", probe_size=32)
    assert restored.weights_source == restored_module.weights_source == "checkpoint"
    assert isinstance(restored, TorchFXFeatureExtractor)
