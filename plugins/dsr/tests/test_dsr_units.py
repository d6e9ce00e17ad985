"""DSR's pieces on hand-checkable cases: the vector quantiser, the two codebooks' maps, the
anomaly generator in quantised space, the focal loss, and the user's own latent file."""

from __future__ import annotations

import pytest
import torch
from adcore_dsr.latent import DiscreteLatentModel, VectorQuantizer
from adcore_dsr.model import Dsr, replace_codes
from safetensors.torch import save_file


def _quantiser() -> VectorQuantizer:
    vq = VectorQuantizer(3, 2)
    vq.set_codebook(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))
    return vq.eval()


def test_quantiser_picks_the_nearest_codebook_entry():
    vq = _quantiser()
    z = torch.tensor([[0.1, -0.2], [0.8, 0.3], [0.2, 1.4], [0.6, 0.0]]).t().reshape(1, 2, 2, 2)
    quantised, _, indices = vq(z)
    assert indices.flatten().tolist() == [0, 1, 2, 1]
    assert torch.equal(quantised.detach(), vq.codebook[indices].permute(0, 3, 1, 2))


def test_straight_through_gradient_and_commitment_loss():
    vq = _quantiser()
    z = torch.tensor([[0.1, -0.2], [0.8, 0.3], [0.2, 1.4], [0.6, 0.0]]).t().reshape(1, 2, 2, 2).requires_grad_(True)
    quantised, commitment, _ = vq(z)
    (quantised * torch.arange(8.0).view(1, 2, 2, 2)).sum().backward()
    # The quantisation is skipped by the gradient: d(sum w*q)/dz = w.
    assert torch.equal(z.grad, torch.arange(8.0).view(1, 2, 2, 2))
    # ||z - q||^2 averaged: squared offsets 0.05, 0.13, 0.40, 0.16 over 8 values.
    assert commitment.item() == pytest.approx((0.05 + 0.13 + 0.40 + 0.16) / 8, abs=1e-6)


def test_training_moves_the_codebook_towards_its_inputs():
    vq = _quantiser().train()
    before = vq.codebook.clone()
    z = torch.full((1, 2, 2, 2), 0.9)  # every position nearest to entry 1 (1, 0)
    vq(z.requires_grad_(True))
    assert (vq.codebook[1] - torch.tensor([0.9, 0.9])).norm() < (before[1] - torch.tensor([0.9, 0.9])).norm()
    assert torch.equal(vq.codebook[0], before[0])


def test_two_codebooks_give_maps_at_a_quarter_and_an_eighth():
    model = DiscreteLatentModel(16, 8, 32, 24).eval()
    with torch.no_grad():
        reconstruction, codes = model(torch.rand(2, 3, 64, 96))
    assert reconstruction.shape == (2, 3, 64, 96)
    assert codes["fine"].shape == (2, 8, 16, 24) and codes["fine_ids"].shape == (2, 16, 24)
    assert codes["coarse"].shape == (2, 8, 8, 12) and codes["coarse_ids"].max() < 24
    assert torch.equal(codes["fine"], model.vq_fine.lookup(codes["fine_ids"]))


def test_replacement_changes_only_masked_positions_to_distant_codes():
    codebook = torch.arange(10.0).view(10, 1)  # entry i is the number i: distances are |i - j|
    indices = torch.tensor([[[0, 1], [2, 3]], [[4, 5], [6, 7]]])
    mask = torch.tensor([[[True, False], [False, True]], [[False, False], [True, True]]])
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        out = replace_codes(indices, mask, codebook, torch.tensor([0.2, 1.0]), generator)
        assert torch.equal(out[~mask], indices[~mask])
        assert (out[mask] != indices[mask]).all()
        # strength 0.2: the 2 farthest of 10 entries. From 0 those are 8, 9; from 3: 8, 9.
        assert out[0, 0, 0] in (8, 9) and out[0, 1, 1] in (8, 9)


def test_replacement_is_seeded():
    codebook = torch.randn(50, 4)
    indices = torch.randint(0, 50, (2, 8, 8))
    mask = torch.rand(2, 8, 8) > 0.5
    first = replace_codes(indices, mask, codebook, torch.tensor([0.5, 0.9]), torch.Generator().manual_seed(3))
    again = replace_codes(indices, mask, codebook, torch.tensor([0.5, 0.9]), torch.Generator().manual_seed(3))
    assert torch.equal(first, again)


@pytest.fixture(scope="module")
def tiny_latent(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("latent") / "tiny.safetensors"
    model = DiscreteLatentModel(16, 8, 32, 32)
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_user_latent_file_is_used_and_stays_frozen(tiny_latent):
    detector = Dsr(image_size=64, latent_weights=str(tiny_latent), anomaly_width=4, restriction_width=8)
    assert detector.latent_source == f"path:{tiny_latent}"
    assert detector.latent.width == 16 and detector.latent.dim == 8 and detector.latent.vq_fine.codes == 32
    assert not any(p.requires_grad for p in detector.latent.parameters())
    detector.train()
    assert not detector.latent.training


def test_quantised_anomalies_footprint_matches_the_changed_codes(tiny_latent):
    detector = Dsr(image_size=64, latent_weights=str(tiny_latent), anomaly_probability=1.0)
    images = torch.rand(6, 3, 64, 64)
    codes = detector.encode(images)
    fine_ids, coarse_ids, mask = detector.quantised_anomalies(codes, (64, 64), torch.Generator().manual_seed(1))
    assert mask.shape == (6, 1, 64, 64) and set(mask.unique().tolist()) <= {0.0, 1.0}
    changed_fine = (fine_ids != codes["fine_ids"]).float()[:, None]
    changed_coarse = (coarse_ids != codes["coarse_ids"]).float()[:, None]
    footprint = torch.maximum(
        torch.nn.functional.interpolate(changed_fine, size=(64, 64)),
        torch.nn.functional.interpolate(changed_coarse, size=(64, 64)),
    )
    assert torch.equal(footprint, mask)  # every masked pixel has a changed code above it, and only those
    assert mask.flatten(1).amax(1).all()  # anomaly_probability 1: every image altered


def test_a_file_that_is_not_a_latent_model_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path))
    with pytest.raises(ValueError, match="not a DSR latent model"):
        Dsr(image_size=64, latent_weights=str(path))
