"""Frozen backbones run with batch norms folded into their convolutions: same features, unchanged state."""

from __future__ import annotations

import pytest
import torch
from adcore import create_feature_extractor
from adcore.backbones.batchnorm_folding import fold_batch_norms
from torch import nn


def _randomize_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial statistics, so that a wrong fold cannot pass for an identity."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(n, generator=generator))
            module.bias.data.copy_(torch.randn(n, generator=generator))


class ConvNormAct(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=True)
        self.norm = nn.BatchNorm2d(8)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class NormAndSkipOfTheSameConv(nn.Module):
    """The convolution's output is also added after the norm: folding it would change the result."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.conv(x)
        return self.norm(y) + y


def test_folded_copy_gives_the_same_output_and_leaves_the_original_alone():
    model = ConvNormAct().eval()
    _randomize_norms(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 16, 16)
    folded, count = fold_batch_norms(model, lambda m: m(x))
    assert count == 1
    assert isinstance(folded.norm, nn.Identity)
    assert isinstance(model.norm, nn.BatchNorm2d)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_norm_whose_input_is_used_elsewhere_is_refused():
    model = NormAndSkipOfTheSameConv().eval()
    _randomize_norms(model)
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="changed the backbone's outputs"):
        fold_batch_norms(model, lambda m: m(x))


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(ConvNormAct().train(), lambda m: m(torch.randn(1, 3, 8, 8)))


def test_frozen_timm_extractor_folds_and_follows_changed_weights():
    extractor = create_feature_extractor("tf_efficientnet_lite0", (1, 2), weights="none")
    _randomize_norms(extractor.model)
    keys = set(extractor.state_dict())
    images = torch.rand(2, 3, 64, 64)

    def unfolded():
        with torch.no_grad():
            return extractor._features(images.contiguous(memory_format=torch.channels_last), extractor.model)

    for got, want in zip(extractor(images), unfolded(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    folded = extractor.__dict__["_folded"][1]
    assert folded is not extractor.model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())  # every norm follows a conv
    assert set(extractor.state_dict()) == keys  # checkpoints see the original network
    # Loading other statistics (a checkpoint does it in place) must reach the folded copy.
    _randomize_norms(extractor.model, seed=1)
    for got, want in zip(extractor(images), unfolded(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_trainable_extractor_is_not_folded():
    extractor = create_feature_extractor("tf_efficientnet_lite0", (1,), weights="none", frozen=False)
    extractor(torch.rand(1, 3, 32, 32))
    assert "_folded" not in extractor.__dict__


class Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = ConvNormAct()
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x):
        return self.down(self.block(x))


def test_folding_a_torchfx_graph_never_moves_the_originals_statistics():
    """torch.fx graphs come out of deepcopy in training mode: the copy must still not update running stats."""
    from adcore.backbones.torchfx import create_torchfx_extractor

    network = Stem()
    _randomize_norms(network)
    extractor = create_torchfx_extractor(network, ["block", "down"])
    before = {k: v.clone() for k, v in extractor.state_dict().items()}
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = extractor._features(images.contiguous(memory_format=torch.channels_last), extractor.model)
    got = extractor(images)
    after = extractor.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in extractor.__dict__["_folded"][1].modules())
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("backbone", "some_left"),
    [
        ("resnet18", False),  # residual blocks: every norm follows a convolution
        ("densenet121", True),  # pre-activation norms follow concatenations: left alone
    ],
)
def test_other_backbone_families_fold_what_follows_a_convolution(backbone, some_left):
    extractor = create_feature_extractor(backbone, (1, 2), weights="none")
    _randomize_norms(extractor.model)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = extractor._features(images.contiguous(memory_format=torch.channels_last), extractor.model)
    for got, expected in zip(extractor(images), want, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    folded = extractor.__dict__["_folded"][1]
    left = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert (left > 0) == some_left
    assert left < sum(isinstance(m, nn.BatchNorm2d) for m in extractor.model.modules())  # some folded


def test_tracing_inside_folded_for_tracing_sees_the_folded_copy_and_restores_the_network():
    from adcore.backbones.feature_extractor import folded_for_tracing

    extractor = create_feature_extractor("tf_efficientnet_lite0", (1, 2), weights="none")
    _randomize_norms(extractor.model)
    plain = extractor.model
    images = torch.rand(2, 3, 64, 64)
    with folded_for_tracing(extractor, images):
        assert extractor.model is extractor.__dict__["_folded"][1]
        assert not any(isinstance(m, nn.BatchNorm2d) for m in extractor.model.modules())
        traced = torch.jit.trace(extractor, (images,), check_trace=False)
    assert extractor.model is plain  # the real network is back: state dict and checkpoints unchanged
    with torch.no_grad():
        eager = extractor(images)
    for got, want in zip(traced(images), eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # the same arithmetic as eager
