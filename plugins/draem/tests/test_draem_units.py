"""DRAEM's pieces on hand-checkable cases: losses, the training target, SSPCAB, the score."""

from __future__ import annotations

import pytest
import torch
from adcore import Batch
from adcore_draem.model import (
    DiscriminativeNetwork,
    Draem,
    ReconstructiveNetwork,
    Sspcab,
    alter_textures,
    random_crop,
    ssim_loss,
)


def test_ssim_loss_is_zero_for_identical_images_and_grows_with_damage():
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert ssim_loss(images, images.clone()).item() == pytest.approx(0.0, abs=1e-5)
    noisy = (images + 0.1 * torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    noisier = (images + 0.4 * torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert 0 < ssim_loss(images, noisy) < ssim_loss(images, noisier) <= 1


def _draem(**overrides) -> Draem:
    torch.manual_seed(0)
    params = {"image_size": 64, "base_width": 4, "disc_base_width": 4}
    params.update(overrides)
    return Draem(**params)


def test_the_discriminative_target_is_exactly_the_generators_mask(monkeypatch):
    detector = _draem(anomaly_probability=1.0)
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    batch = Batch(images, [f"{i}.png" for i in range(4)])
    calls = []
    generate = detector.anomalies.__class__.__call__

    def record(maker, images_in, generator, sources=None):
        out = generate(maker, images_in, generator, sources)
        calls.append((images_in, sources, out))
        return out

    monkeypatch.setattr(detector.anomalies.__class__, "__call__", record)
    torch.manual_seed(7)
    augmented = detector.augment(batch)
    assert len(calls) == 1
    images_in, sources, (expected_images, expected_masks) = calls[0]
    # The batch's target is the generator's own mask, and its image the generator's output.
    assert augmented.mask is expected_masks and augmented.image is expected_images
    assert torch.equal(images_in, images)
    # Replaying the generator from the same state with the same sources gives the same pair.
    torch.manual_seed(7)
    detector.augment(batch)
    assert torch.equal(calls[1][2][1], expected_masks)
    assert augmented.image is not batch.image  # a new tensor: the Engine marks it augmented
    assert torch.equal(augmented.auxiliary["original"].image, images)  # what the reconstruction must give back
    assert augmented.label.tolist() == [1, 1, 1, 1]
    assert set(expected_masks.unique().tolist()) == {0.0, 1.0}
    # Outside the mask the image is untouched; inside, it is the blend with the source.
    outside = augmented.mask.expand_as(images) == 0
    assert torch.equal(augmented.image[outside], images[outside])
    assert not torch.equal(augmented.image, images)
    inside = ~outside
    low, high = detector.config.beta
    weight = (augmented.image - sources)[inside] / (images - sources)[inside].where(
        (images - sources)[inside].abs() > 0.05, torch.tensor(float("nan"))
    )
    weight = weight[~weight.isnan()]
    assert weight.min() >= low - 1e-4 and weight.max() <= high + 1e-4  # the image's weight is beta


def test_training_step_uses_the_mask_as_target_and_the_original_as_reconstruction_target(monkeypatch):
    detector = _draem()
    seen = {}

    def spy(anomalous, original, masks):
        seen.update(anomalous=anomalous, original=original, masks=masks)
        return {"loss": anomalous.sum() * 0}

    monkeypatch.setattr(detector, "losses", spy)
    images = torch.rand(2, 3, 64, 64)
    torch.manual_seed(3)
    augmented = detector.augment(Batch(images, ["a", "b"]))
    detector.training_step(augmented)
    assert seen["anomalous"] is augmented.image and seen["masks"] is augmented.mask
    assert seen["original"] is augmented.auxiliary["original"].image


def test_textures_are_used_inside_the_mask_and_crops_are_consistent():
    detector = _draem(anomaly_probability=1.0, beta=(0.0, 0.0), train_crop=32)  # beta 0: the texture alone
    images = torch.full((3, 3, 64, 64), 0.5)
    textures = Batch(torch.zeros(2, 3, 64, 64), ["t0", "t1"])  # black: altered, still darker or inverted
    batch = Batch(images, ["a", "b", "c"], auxiliary={"textures": textures})
    torch.manual_seed(0)
    augmented = detector.augment(batch)
    assert augmented.image.shape == (3, 3, 32, 32) and augmented.mask.shape == (3, 1, 32, 32)
    inside = augmented.mask.expand_as(augmented.image) > 0
    assert not torch.any(augmented.image[inside] == 0.5)  # texture pixels, never the image's grey
    assert torch.all(augmented.image[~inside] == 0.5)


def test_alter_textures_stays_in_range_and_is_seeded():
    textures = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    first = alter_textures(textures, torch.Generator().manual_seed(1))
    again = alter_textures(textures, torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and first.min() >= 0 and first.max() <= 1
    assert not torch.equal(first, textures)


def test_random_crop_takes_the_same_window_from_companions():
    images = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    crops, same = random_crop(images, 4, torch.Generator().manual_seed(0), (images.clone(),))
    assert crops.shape == (2, 1, 4, 4) and torch.equal(crops, same)
    # Each crop is a contiguous window of its own image.
    for index in range(2):
        top, left = divmod(int(crops[index, 0, 0, 0] - 64 * index), 8)
        assert torch.equal(crops[index, 0], images[index, 0, top : top + 4, left : left + 4])


def test_sspcab_shape_masked_centre_and_loss():
    torch.manual_seed(0)
    block = Sspcab(16, offset=2)
    x = torch.rand(2, 16, 9, 9)
    out = block(x)
    assert out.shape == x.shape
    # The centre is masked: a change at one pixel reaches the prediction only at the four
    # diagonal offsets (+-2, +-2), never the pixel itself.
    changed = x.clone()
    changed[:, :, 4, 4] += 1.0
    difference = (block.predict(changed) - block.predict(x)).abs().amax(dim=(0, 1))
    reached = {tuple(p) for p in (difference > 0).nonzero().tolist()}
    assert reached <= {(2, 2), (2, 6), (6, 2), (6, 6)} and reached
    assert difference[4, 4] == 0
    # The reconstructive network adds the block's loss only when asked.
    plain, with_block = ReconstructiveNetwork(4), ReconstructiveNetwork(4, sspcab=True)
    images = torch.rand(2, 3, 32, 32)
    assert plain(images)[1].item() == 0.0
    reconstruction, loss = with_block(images)
    assert reconstruction.shape == images.shape and loss.item() > 0
    loss.backward()
    assert with_block.sspcab.corners[0].weight.grad is not None


def test_sspcab_loss_enters_the_total_with_its_weight():
    detector = _draem(sspcab=True, sspcab_lambda=0.5)
    images = torch.rand(2, 3, 64, 64)
    masks = torch.zeros(2, 1, 64, 64)
    parts = detector.losses(images, images, masks)
    total = parts["l2"] + parts["ssim"] + parts["focal"] + 0.5 * parts["sspcab"]
    assert parts["sspcab"] > 0 and parts["loss"].item() == pytest.approx(total.item(), rel=1e-6)


def test_networks_keep_the_resolution():
    assert ReconstructiveNetwork(4)(torch.rand(1, 3, 64, 96))[0].shape == (1, 3, 64, 96)
    assert DiscriminativeNetwork(6, 4)(torch.rand(1, 6, 64, 96)).shape == (1, 2, 64, 96)


def test_image_score_is_the_maximum_of_the_mean_filtered_map(monkeypatch):
    detector = _draem(score_filter=5).eval()
    anomaly_map = torch.zeros(2, 1, 64, 64)
    anomaly_map[0, 0, 10, 10] = 1.0  # one hot pixel: 1/25 after a 5x5 mean
    anomaly_map[1, 0, 20:25, 30:35] = 0.5  # a 5x5 blob of 0.5: 0.5 at its centre
    monkeypatch.setattr(detector, "anomaly_probability_map", lambda images: anomaly_map)
    output = detector(torch.rand(2, 3, 64, 64))
    assert output.pred_score.tolist() == pytest.approx([1 / 25, 0.5])
    assert output.anomaly_map is anomaly_map


def test_config_is_validated():
    with pytest.raises(ValueError, match="multiple of 32"):
        Draem(image_size=100)
    with pytest.raises(ValueError, match="multiple of 32"):
        Draem(image_size=64, train_crop=48)
    assert Draem(image_size=64, beta="0.1,0.9", base_width=2, disc_base_width=2).config.beta == (0.1, 0.9)


def test_without_textures_training_falls_back_and_says_so(tmp_path):
    detector = _draem(textures="")
    with pytest.warns(UserWarning, match="no texture images"):
        assert detector.auxiliary_data("textures") is None


def test_a_texture_folder_becomes_the_auxiliary_stream(tmp_path):
    from PIL import Image

    for index in range(3):
        Image.new("RGB", (40, 30), (index * 80, 10, 200)).save(tmp_path / f"t{index}.png")
    detector = _draem(textures=str(tmp_path))
    data = detector.auxiliary_data("textures")
    assert len(data) == 3 and data[0]["image"].shape == (3, 64, 64)
    assert 0 <= data[0]["image"].min() and data[0]["image"].max() <= 1  # pixels in [0, 1]
    with pytest.raises(Exception, match="not found"):
        _draem(textures=str(tmp_path / "missing")).auxiliary_data("textures")
