"""The run's seed reaches PaDiM: its random channel subset follows the seed, not a config field."""

import pytest
import torch
from adcore import AnomalyDataset, Engine, create_detector
from adcore.data.synthetic import make_mvtec
from adcore_padim.model import Padim


@pytest.fixture(scope="module")
def train_folder(tmp_path_factory):
    return make_mvtec(tmp_path_factory.mktemp("padim-seed"), n_train=8, n_good=0, n_bad=0) / "train" / "good"


def fitted_state(folder, seed: int) -> dict[str, torch.Tensor]:
    detector = create_detector("padim", seed=seed, image_size=64)
    engine = Engine(device="cpu", seed=seed, batch_size=4, progress=False, log=lambda message: None)
    engine.fit(detector, AnomalyDataset.from_folder(folder, detector.input_spec))
    return {key: value.clone() for key, value in detector.state_dict().items()}


def test_the_seed_picks_the_channel_subset(train_folder):
    first, again, other = (fitted_state(train_folder, seed) for seed in (0, 0, 1))
    assert first.keys() == again.keys() == other.keys()
    # Bit for bit (equal_nan: the post-processor's thresholds stay NaN until calibrated).
    torch.testing.assert_close(again, first, rtol=0, atol=0, equal_nan=True, msg="seed 0 twice gives different models")
    assert not torch.equal(first["channel_index"], other["channel_index"]), "seeds 0 and 1 pick the same channels"
    assert not torch.equal(first["gaussian.mean"], other["gaussian.mean"])


def test_seed_is_no_longer_a_parameter():
    with pytest.raises(ValueError, match="padim: parameter 'seed' no longer exists"):
        Padim.from_config_dict({"seed": 1})
