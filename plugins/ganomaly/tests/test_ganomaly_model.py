"""The pieces of GANomaly, checked by hand: the losses, the score, the discriminator's re-draw
and the two alternating optimizers."""

from __future__ import annotations

import math

import pytest
import torch
from adcore import Batch
from adcore_ganomaly import model as ganomaly
from adcore_ganomaly.model import (
    DISCRIMINATOR_RESET_BELOW,
    Ganomaly,
    discriminator_loss,
    generator_loss,
    latent_distance,
)

TINY = {"image_size": 16, "n_features": 4, "latent_vec_size": 5}


def tiny(**overrides) -> Ganomaly:
    torch.manual_seed(0)
    return Ganomaly(**{**TINY, **overrides})


def test_generator_loss_weights_the_three_terms_as_the_paper():
    real_features, fake_features = torch.zeros(2, 4, 4, 4), torch.full((2, 4, 4, 4), 2.0)  # L_adv = 4
    images, reconstruction = torch.zeros(2, 3, 8, 8), torch.full((2, 3, 8, 8), 0.5)  # L_con = 0.5
    z, z_hat = torch.zeros(2, 5, 1, 1), torch.full((2, 5, 1, 1), 3.0)  # L_enc = 9
    losses = generator_loss(real_features, fake_features, images, reconstruction, z, z_hat, 1.0, 50.0, 1.0)
    assert losses["adversarial"].item() == pytest.approx(4.0)
    assert losses["contextual"].item() == pytest.approx(0.5)
    assert losses["encoder"].item() == pytest.approx(9.0)
    assert losses["total"].item() == pytest.approx(1 * 4 + 50 * 0.5 + 1 * 9)  # the paper's weights: 38
    other = generator_loss(real_features, fake_features, images, reconstruction, z, z_hat, 2.0, 10.0, 3.0)
    assert other["total"].item() == pytest.approx(2 * 4 + 10 * 0.5 + 3 * 9)


def test_contextual_loss_is_l1_and_the_others_squared():
    images = torch.zeros(1, 3, 2, 2)
    reconstruction = torch.tensor([-1.0, 1.0, -1.0, 1.0] * 3).view(1, 3, 2, 2)  # |.| = 1, (.)^2 = 1
    features = torch.tensor([0.0, 2.0]).view(1, 2, 1, 1)  # against 0: mean square 2, mean abs 1
    z = torch.tensor([1.0, -3.0]).view(1, 2, 1, 1)  # against 0: mean square 5, mean abs 2
    losses = generator_loss(
        torch.zeros_like(features), features, images, 2 * reconstruction, torch.zeros_like(z), z, 1, 1, 1
    )
    assert losses["contextual"].item() == pytest.approx(2.0)  # mean |2 * (+-1)|, not the square (4)
    assert losses["adversarial"].item() == pytest.approx(2.0)
    assert losses["encoder"].item() == pytest.approx(5.0)


def test_discriminator_loss_is_the_mean_bce_of_real_and_fake():
    half = torch.full((4,), 0.5)
    assert discriminator_loss(half, half).item() == pytest.approx(math.log(2))
    sure_real, sure_fake = torch.full((3,), 0.9), torch.full((3,), 0.2)
    expected = 0.5 * (-math.log(0.9) - math.log(1 - 0.2))
    assert discriminator_loss(sure_real, sure_fake).item() == pytest.approx(expected, rel=1e-5)


def test_score_is_the_mean_squared_latent_distance_per_image():
    z = torch.zeros(2, 4, 1, 1)
    z_hat = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0]]).view(2, 4, 1, 1)
    assert latent_distance(z, z_hat).tolist() == pytest.approx([1.0, 1.0])
    z_hat[1, 1] = 2.0
    assert latent_distance(z, z_hat).tolist() == pytest.approx([1.0, 2.0])


@pytest.mark.parametrize("size", [16, 32, 64])
def test_shapes_follow_the_dcgan_pyramid(size):
    detector = tiny(image_size=size)
    images = torch.rand(2, 3, size, size) * 2 - 1
    reconstruction, z, z_hat = detector.generator(images)
    assert reconstruction.shape == images.shape
    assert reconstruction.abs().max() <= 1  # tanh, like the [-1, 1] inputs
    assert z.shape == z_hat.shape == (2, 5, 1, 1)
    probability, features = detector.discriminator(images)
    assert probability.shape == (2,) and ((probability > 0) & (probability < 1)).all()
    assert features.shape[-2:] == (4, 4)  # the last hidden map, where the encoder stops halving
    assert detector.input_spec.mean == detector.input_spec.std == (0.5, 0.5, 0.5)  # pixels in [-1, 1]


def test_without_the_final_convolution_the_code_is_the_last_feature_map():
    detector = tiny(add_final_conv=False)
    reconstruction, z, z_hat = detector.generator(torch.rand(2, 3, 16, 16))
    assert z.shape == z_hat.shape == (2, 8, 4, 4)  # 4 -> 8 channels at 16 -> 8 -> 4 px
    assert reconstruction.shape == (2, 3, 16, 16)


def test_image_size_must_be_a_square_power_of_two():
    for bad in (24, (32, 64), 8):
        with pytest.raises(ValueError, match="power of two"):
            Ganomaly(image_size=bad)


def _discriminator_state(detector: Ganomaly) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in detector.discriminator.state_dict().items()}


def test_discriminator_is_drawn_afresh_only_below_the_threshold():
    detector = tiny()
    before = _discriminator_state(detector)
    generator_before = {k: v.clone() for k, v in detector.generator.state_dict().items()}

    assert not detector.reset_discriminator_if_collapsed(torch.tensor(DISCRIMINATOR_RESET_BELOW * 10))
    assert not detector.reset_discriminator_if_collapsed(torch.tensor(DISCRIMINATOR_RESET_BELOW * 1.01))
    assert all(torch.equal(before[k], v) for k, v in detector.discriminator.state_dict().items())
    assert detector.discriminator_resets == 0

    assert detector.reset_discriminator_if_collapsed(torch.tensor(DISCRIMINATOR_RESET_BELOW / 10))
    after = detector.discriminator.state_dict()
    convolutions = [k for k in after if k.endswith("weight") and after[k].dim() == 4]
    assert all(not torch.equal(before[k], after[k]) for k in convolutions)
    assert all(abs(after[k].std().item() - 0.02) < 0.01 for k in convolutions)  # DCGAN's N(0, 0.02)
    assert detector.discriminator_resets == 1
    assert all(torch.equal(generator_before[k], v) for k, v in detector.generator.state_dict().items())


class RecordingSteps:
    """The contract of the Engine's OptimizerSteps, recording which parameters each step moved."""

    def __init__(self, detector: Ganomaly) -> None:
        self.detector = detector
        self.optimizers = dict(detector.configure_optimizers(None).optimizers)
        self.moved: list[tuple[str, set[str]]] = []

    def step(self, name: str, loss: torch.Tensor) -> None:
        before = {k: p.detach().clone() for k, p in self.detector.named_parameters()}
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        moved = {k for k, p in self.detector.named_parameters() if not torch.equal(before[k], p)}
        self.moved.append((name, moved))


def test_two_optimizers_alternate_each_stepping_only_its_own_network():
    detector = tiny().train()
    steps = RecordingSteps(detector)
    generator = {f"generator.{k}" for k, _ in detector.generator.named_parameters()}
    discriminator = {f"discriminator.{k}" for k, _ in detector.discriminator.named_parameters()}
    losses = detector.adversarial_step(Batch(image=torch.rand(4, 3, 16, 16) * 2 - 1, path=[""] * 4), steps)

    assert [name for name, _ in steps.moved] == ["generator", "discriminator"]  # the reference's order
    assert steps.moved[0][1] == generator  # G_E, G_D and E all learn; D does not
    assert steps.moved[1][1] == discriminator
    assert set(losses) == {"loss", "discriminator", "adversarial", "contextual", "encoder"}
    assert losses["loss"].item() == pytest.approx(
        (losses["adversarial"] + 50 * losses["contextual"] + losses["encoder"]).item(), rel=1e-5
    )


def test_a_collapsed_discriminator_is_redrawn_during_training(monkeypatch):
    detector = tiny().train()
    steps = RecordingSteps(detector)
    # A discriminator that separates real from fake perfectly: its loss is ~0.
    monkeypatch.setattr(ganomaly, "discriminator_loss", lambda real, fake: (real * 0).sum() + 1e-7)
    detector.adversarial_step(Batch(image=torch.rand(2, 3, 16, 16), path=["a", "b"]), steps)
    assert detector.discriminator_resets == 1
    monkeypatch.setattr(ganomaly, "discriminator_loss", lambda real, fake: (real * 0).sum() + 0.3)
    detector.adversarial_step(Batch(image=torch.rand(2, 3, 16, 16), path=["a", "b"]), steps)
    assert detector.discriminator_resets == 1


def test_scores_images_without_a_map():
    detector = tiny().eval()
    output = detector(torch.rand(3, 3, 16, 16))
    assert output.pred_score.shape == (3,) and output.anomaly_map is None
    assert (output.pred_score >= 0).all()
