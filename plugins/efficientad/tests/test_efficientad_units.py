"""The pieces of EfficientAD, each checked on a case small enough to verify by hand."""

from __future__ import annotations

import pytest
import torch
from adcore import ResourceNotFoundError, create_detector
from adcore_efficientad.model import (
    Autoencoder,
    colour_jitter,
    hard_feature_loss,
    map_quantiles,
    quantile_normalise,
)
from adcore_efficientad.pdn import RECEPTIVE_FIELD, patch_centres, pdn, pdn_output_size
from safetensors.torch import save_file


@pytest.mark.parametrize("size", ["small", "medium"])
def test_pdn_maps_256_px_to_56x56_with_the_papers_channels(size):
    with torch.no_grad():
        assert pdn(size)(torch.zeros(1, 3, 256, 256)).shape == (1, 384, 56, 56)
        assert pdn(size, 768)(torch.zeros(1, 3, 64, 64)).shape == (1, 768, 8, 8)
    assert pdn_output_size(256) == 56 and pdn_output_size(64) == 8


@pytest.mark.parametrize("size", ["small", "medium"])
def test_each_pdn_output_sees_exactly_its_33_px_patch(size):
    """Changing one pixel changes exactly the outputs whose patch (centre 16 + 4i, side 33) holds it."""
    torch.manual_seed(0)
    net = pdn(size, 8).double()
    x = torch.rand(1, 3, 96, 96, dtype=torch.float64)
    y = x.clone()
    y[0, :, 50, 50] += 1.0
    with torch.no_grad():
        changed = (net(x) - net(y)).abs().amax(dim=(0, 1)) > 0
    centres = patch_centres(changed.shape[0])
    inside = (centres - 50).abs() <= (RECEPTIVE_FIELD - 1) / 2
    assert torch.equal(changed, inside[:, None] & inside[None, :])


def test_hard_feature_loss_keeps_exactly_the_top_quantile():
    values = torch.arange(1000.0)[torch.randperm(1000)].view(10, 10, 10)  # 0..999, shuffled
    assert hard_feature_loss(values, 0.999).item() == 999.0  # only the largest
    assert hard_feature_loss(values, 0.99).item() == pytest.approx(sum(range(990, 1000)) / 10)  # top 10
    assert hard_feature_loss(values, 0.0).item() == pytest.approx(499.5)  # everything
    # the threshold is torch.quantile's
    q = torch.quantile(values.flatten(), 0.95)
    assert hard_feature_loss(values, 0.95).item() == pytest.approx(values[values >= q].mean().item())


def test_quantile_normalisation_maps_q_a_to_0_and_q_b_to_0_1():
    maps = torch.arange(10001.0)  # quantiles are exactly 0.9 * 10000 and 0.995 * 10000
    q_a, q_b = map_quantiles(maps)
    assert (q_a.item(), q_b.item()) == (9000.0, 9950.0)
    out = quantile_normalise(torch.tensor([9000.0, 9950.0, 9475.0]), q_a, q_b)
    assert torch.allclose(out, torch.tensor([0.0, 0.1, 0.05]))


def test_autoencoder_reconstructs_teacher_sized_features_through_a_64d_code():
    ae = Autoencoder((256, 256), 384, (56, 56))
    with torch.no_grad():
        assert ae.encoder(torch.zeros(2, 3, 256, 256)).shape == (2, 64, 1, 1)
        assert ae(torch.zeros(2, 3, 256, 256)).shape == (2, 384, 56, 56)
        assert Autoencoder((64, 64), 16, (8, 8))(torch.zeros(1, 3, 64, 64)).shape == (1, 16, 8, 8)


def test_colour_jitter_changes_colours_within_the_valid_range():
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    rgb = torch.rand(16, 3, 8, 8)
    torch.manual_seed(0)
    out = colour_jitter((rgb - mean) / std, mean, std) * std + mean
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    change = (out - rgb).abs().amax(dim=(1, 2, 3))
    assert (change > 0.01).sum() >= 12  # factors in [0.8, 1.2]: most images visibly changed
    assert change.max() < 0.6


def _teacher_file(path, size="small", channels=16):
    torch.manual_seed(1)
    state = {k: v.half() for k, v in pdn(size, channels).state_dict().items()}
    save_file(state, str(path))
    return state


def test_a_users_teacher_file_is_loaded_as_the_teacher(tmp_path):
    state = _teacher_file(tmp_path / "mine.safetensors")
    detector = create_detector("efficientad", image_size=64, teacher_weights=str(tmp_path / "mine.safetensors"))
    assert detector.teacher_source == f"path:{tmp_path / 'mine.safetensors'}"
    assert detector.channels == 16 and detector.student[-1].out_channels == 32  # sized from the file
    for key, value in state.items():
        assert torch.equal(detector.teacher.state_dict()[key], value.float())


def test_a_teacher_of_the_wrong_size_or_a_missing_file_is_refused(tmp_path):
    _teacher_file(tmp_path / "medium.safetensors", size="medium")
    with pytest.raises(ValueError, match="not a PDN-small"):
        create_detector("efficientad", image_size=64, teacher_weights=str(tmp_path / "medium.safetensors"))
    with pytest.raises(ResourceNotFoundError):
        create_detector("efficientad", image_size=64, teacher_weights=str(tmp_path / "absent.safetensors"))


def test_penalty_images_come_from_the_named_folder_or_are_skipped(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (40, 30), (i * 80, 10, 10)).save(tmp_path / f"{i}.png")
    detector = create_detector("efficientad", image_size=64, penalty_images=str(tmp_path))
    assert len(detector.auxiliary_data("penalty")) == 3
    assert create_detector("efficientad", image_size=64).auxiliary_data("penalty") is None
    with pytest.raises(ResourceNotFoundError):
        create_detector("efficientad", image_size=64, penalty_images=str(tmp_path / "none")).auxiliary_data("penalty")


def test_image_size_below_64_px_is_refused():
    with pytest.raises(ValueError, match="at least 64"):
        create_detector("efficientad", image_size=48)
