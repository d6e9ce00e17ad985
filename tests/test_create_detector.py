"""create_detector: one entry point by name, with seeded random initialisation."""

import pytest
import torch
from adcore.plugins import PluginError, create_detector


def _student(seed):
    return create_detector("stfpm", seed=seed, image_size=64).student.state_dict()


def test_same_seed_builds_the_same_random_student():
    first, again, other = _student(0), _student(0), _student(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


def test_parameters_override_the_config_and_unknown_ones_are_refused():
    detector = create_detector("padim", image_size=96, n_features=50, layers="1,2")
    assert detector.config.image_size == (96, 96)
    assert detector.channel_index.numel() == 50
    with pytest.raises(ValueError, match="unknown parameter"):
        create_detector("padim", n_feature=50)
    with pytest.raises(PluginError, match="unknown detector"):
        create_detector("no-such-model")
