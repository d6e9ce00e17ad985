"""Reverse Distillation's pieces on hand-checkable cases: the networks mirror the encoder, the loss, the map."""

from __future__ import annotations

import pytest
import torch
from adcore.data import AnomalyDataset, load_data
from adcore.data.synthetic import make_mvtec
from adcore.engine import Engine
from adcore.seed import seed_everything
from adcore_reverse_distillation.model import (
    ReverseDistillation,
    ReverseDistillationConfig,
    _halvings,
    cosine_distance_maps,
    distillation_loss,
    fuse_maps,
)
from torch import nn

SIZE = 64


def _build(seed: int = 0, **overrides) -> ReverseDistillation:
    seed_everything(seed)
    return ReverseDistillation(ReverseDistillationConfig(**{"image_size": SIZE, **overrides}))


@pytest.mark.parametrize(
    "backbone, weights, layers",
    [
        ("tf_efficientnet_lite0", "auto", (1, 2, 3)),  # strides 4, 8, 16; channels 24, 40, 112
        ("tf_efficientnet_lite0", "auto", (2, 3, 4)),  # strides 8, 16, 32; channels 40, 112, 320
        ("resnet18", "none", (1, 2, 3)),  # shapes only: random weights; channels 64, 128, 256
        ("resnet18", "none", (1, 3)),  # a stride ratio of 4: two halvings / two upsamplings
    ],
)
def test_decoder_mirrors_the_encoders_channels_and_strides(backbone, weights, layers):
    image_size = 128 if 4 in layers else SIZE
    detector = _build(backbone=backbone, weights=weights, layers=layers, image_size=image_size)
    channels, strides = detector.encoder.channels, detector.encoder.strides
    images = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        teacher = detector.encoder(images)
        embedding = detector.bottleneck(teacher)
        student = detector.decoder(embedding)
    # The one-class embedding: twice the deepest level's channels, at twice its stride.
    assert tuple(embedding.shape) == (
        2,
        2 * channels[-1],
        image_size // (2 * strides[-1]),
        image_size // (2 * strides[-1]),
    )
    assert len(student) == len(teacher) == len(layers)
    for t, s, c, stride in zip(teacher, student, channels, strides):
        assert tuple(s.shape) == tuple(t.shape) == (2, c, image_size // stride, image_size // stride)
    # One decoder stage per level, deepest first, each producing that level's channels.
    produced = [
        [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features
        for stage in detector.decoder.stages
    ]
    assert produced == channels[::-1]
    # The fusion brings every shallower level to the deepest resolution with one strided conv per halving.
    strided = [
        sum(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in branch.modules())
        for branch in detector.bottleneck.fusion
    ]
    assert strided == [(strides[-1] // s).bit_length() - 1 for s in strides[:-1]]


def test_stride_ratios_must_be_powers_of_two():
    assert [_halvings(16, 4), _halvings(16, 8), _halvings(32, 32)] == [2, 1, 0]
    for coarse, fine in [(24, 8), (20, 8), (4, 8)]:
        with pytest.raises(ValueError, match="powers of two"):
            _halvings(coarse, fine)


def test_embedding_width_is_a_parameter_and_the_encoder_stays_frozen():
    detector = _build(embedding_channels=96, decoder_blocks=3)
    with torch.no_grad():
        embedding = detector.bottleneck(detector.encoder(torch.randn(1, 3, SIZE, SIZE)))
    assert embedding.shape[1] == 96
    assert all(len(stage) == 3 for stage in detector.decoder.stages)
    assert not any(p.requires_grad for p in detector.encoder.parameters())
    optimizer = detector.configure_optimizers(None)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in [*detector.bottleneck.parameters(), *detector.decoder.parameters()]}
    assert optimizer.param_groups[0]["betas"] == (0.5, 0.999) and optimizer.param_groups[0]["lr"] == 0.005


def test_loss_is_zero_when_the_student_equals_the_teacher():
    torch.manual_seed(0)
    teacher = [torch.randn(2, 8, 6, 6), torch.randn(2, 16, 3, 3)]
    assert distillation_loss(teacher, [t.clone() for t in teacher]).abs() < 1e-6
    # Cosine ignores the length of each feature vector: a scaled student is a perfect student too.
    assert distillation_loss(teacher, [3.0 * t for t in teacher], flat_cosine_weight=1.0).abs() < 1e-6
    # Opposite features: 1 - cos = 2 at every position of each of the 2 levels (and 2 per level flattened).
    assert distillation_loss(teacher, [-t for t in teacher]).item() == pytest.approx(4.0)
    assert distillation_loss(teacher, [-t for t in teacher], flat_cosine_weight=0.5).item() == pytest.approx(6.0)


def test_cosine_distance_per_position_by_hand():
    teacher = torch.zeros(1, 2, 1, 3)
    student = torch.zeros(1, 2, 1, 3)
    teacher[0, :, 0, 0], student[0, :, 0, 0] = torch.tensor([1.0, 0.0]), torch.tensor([5.0, 0.0])  # same direction: 0
    teacher[0, :, 0, 1], student[0, :, 0, 1] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])  # orthogonal: 1
    teacher[0, :, 0, 2], student[0, :, 0, 2] = torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])  # 45 degrees
    (distance,) = cosine_distance_maps([teacher], [student])
    expected = torch.tensor([0.0, 1.0, 1.0 - 2**-0.5]).reshape(1, 1, 1, 3)
    assert torch.allclose(distance, expected, atol=1e-6)


def test_map_fusion_add_and_multiply_by_hand():
    fine = torch.tensor([[0.1, 0.2], [0.3, 0.4]]).reshape(1, 1, 2, 2)  # already at the output size
    coarse = torch.full((1, 1, 1, 1), 2.0)  # upsampled: 2 everywhere
    assert torch.allclose(fuse_maps([fine, coarse], (2, 2), "add"), fine + 2.0)
    assert torch.allclose(fuse_maps([fine, coarse], (2, 2), "multiply"), fine * 2.0)
    # A position that is normal at one level (distance 0) stays 0 under multiply, not under add.
    zero_here = torch.tensor([[0.0, 1.0], [1.0, 1.0]]).reshape(1, 1, 2, 2)
    assert fuse_maps([zero_here, coarse], (2, 2), "multiply")[0, 0, 0, 0] == 0
    assert fuse_maps([zero_here, coarse], (2, 2), "add")[0, 0, 0, 0] == 2


def test_forward_is_the_blurred_fused_map_and_its_maximum():
    detector = _build(map_fusion="multiply", blur_sigma=0.0).eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        output = detector(images)
        teacher = detector.encoder(images)
        expected = fuse_maps(cosine_distance_maps(teacher, detector.reconstruct(teacher)), (SIZE, SIZE), "multiply")
    assert output.anomaly_map.shape == (2, 1, SIZE, SIZE)
    assert torch.allclose(output.anomaly_map, expected)
    assert torch.equal(output.pred_score, output.anomaly_map.flatten(1).amax(dim=1))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"layers": (3,)}, "at least 2 levels"),
        ({"layers": (2, 2)}, "distinct"),
        ({"epochs": 0}, "epochs"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"decoder_blocks": 0}, "decoder_blocks"),
        ({"embedding_channels": 0}, "embedding_channels"),
        ({"flat_cosine_weight": -1.0}, "flat_cosine_weight"),
        ({"map_fusion": "max"}, "map_fusion"),
        ({"blur_sigma": -1.0}, "blur_sigma"),
    ],
)
def test_config_rejects_invalid_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        ReverseDistillationConfig(**overrides)


def test_image_sizes_must_fit_the_embedding_stride():
    with pytest.raises(ValueError, match="multiple of 32"):
        _build(image_size=48)  # lite0 levels 1-3: deepest stride 16, embedding stride 32
    detector = _build()
    detector.is_fitted.fill_(True)
    with pytest.raises(ValueError, match="multiples of 32"):
        detector.predict(torch.zeros(1, 3, 80, 80))
    assert detector.predict(torch.zeros(1, 3, 96, 96)).anomaly_map.shape == (1, 1, 96, 96)  # other multiples work


def test_training_lowers_the_loss(tmp_path):
    root = make_mvtec(tmp_path / "category", n_train=8, n_good=1, n_bad=1)
    detector = _build(epochs=4)
    train = AnomalyDataset(load_data(f"mvtec:{root}").train, detector.input_spec, cache=True)
    report = Engine(device="cpu", progress=False, batch_size=4, log=lambda m: None).fit(detector, train)
    losses = [epoch["loss"] for epoch in report["history"]]
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0]
