"""Synthetic anomalies match their definition: Perlin masks, beta-blended sources, seeded."""

from __future__ import annotations

import pytest
import torch
from adcore.components import SyntheticAnomalies, perlin_noise


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_perlin_noise_is_smooth_bounded_and_seeded():
    noise = perlin_noise(3, (64, 48), (4, 4), _gen(0))
    assert noise.shape == (3, 64, 48)
    assert noise.abs().max() <= 1.0 + 1e-5
    assert torch.equal(noise, perlin_noise(3, (64, 48), (4, 4), _gen(0)))
    assert not torch.equal(noise, perlin_noise(3, (64, 48), (4, 4), _gen(1)))
    # Smooth: neighbouring pixels differ far less than the field's range.
    assert (noise[:, 1:] - noise[:, :-1]).abs().max() < 0.2
    # Zero at the lattice points (Perlin's defining property).
    assert noise[:, ::16, ::12].abs().max() < 1e-5


@pytest.mark.parametrize("size", [(64, 64), (40, 96)])
def test_masks_are_binary_non_empty_irregular_blobs(size):
    masks = SyntheticAnomalies().masks(16, size, _gen(3))
    assert masks.shape == (16, 1, *size)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    coverage = masks.mean(dim=(1, 2, 3))
    assert (coverage > 0).all() and (coverage < 1).all()
    assert coverage.std() > 0  # scales vary from image to image


def test_the_blend_is_the_definition_and_beta_stays_in_its_range():
    generator = _gen(5)
    images = torch.rand(32, 3, 32, 32, generator=generator)
    sources = torch.rand(32, 3, 32, 32, generator=generator)
    maker = SyntheticAnomalies(beta=(0.2, 0.6), anomaly_probability=1.0)
    anomalous, masks = maker(images, _gen(9), sources)
    outside = masks.expand_as(images) == 0
    assert torch.equal(anomalous[outside], images[outside])  # untouched outside the mask
    for i in range(32):
        inside = masks[i, 0] > 0
        source, image, result = sources[i][:, inside], images[i][:, inside], anomalous[i][:, inside]
        # result = (1 - beta) * source + beta * image: solve for beta where image and source differ.
        usable = (image - source).abs() > 0.05
        beta = ((result - source)[usable] / (image - source)[usable])
        assert beta.std() < 1e-4, "one beta per image"
        assert 0.2 - 1e-4 <= beta.mean() <= 0.6 + 1e-4


def test_anomaly_probability_leaves_some_images_normal():
    images = torch.rand(200, 3, 16, 16, generator=_gen(1))
    anomalous, masks = SyntheticAnomalies(anomaly_probability=0.5)(images, _gen(2))
    has_anomaly = masks.flatten(1).amax(dim=1) > 0
    assert 70 < int(has_anomaly.sum()) < 130
    assert torch.equal(anomalous[~has_anomaly], images[~has_anomaly])


def test_same_seed_same_anomalies_other_seed_others():
    images = torch.rand(4, 3, 32, 32, generator=_gen(0))
    maker = SyntheticAnomalies(anomaly_probability=1.0)
    first, again, other = maker(images, _gen(11)), maker(images, _gen(11)), maker(images, _gen(12))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


def test_without_textures_sources_stay_in_the_images_range_and_textures_are_resized():
    images = torch.rand(8, 3, 32, 32, generator=_gen(0)) * 2 - 1
    anomalous, _ = SyntheticAnomalies(anomaly_probability=1.0)(images, _gen(4))
    assert anomalous.min() >= images.min() - 1e-5 and anomalous.max() <= images.max() + 1e-5
    textures = torch.rand(8, 3, 50, 70, generator=_gen(1))
    anomalous, masks = SyntheticAnomalies(anomaly_probability=1.0)(images, _gen(4), textures)
    assert anomalous.shape == images.shape and masks.shape == (8, 1, 32, 32)


def test_bad_settings_are_clear():
    with pytest.raises(ValueError, match="beta must be a range inside"):
        SyntheticAnomalies(beta=(0.8, 0.2))
    with pytest.raises(ValueError, match="min_scale < max_scale"):
        SyntheticAnomalies(min_scale=3, max_scale=3)
