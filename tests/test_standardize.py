"""FeatureStandardizer: streaming statistics per channel or per channel and position."""

import pytest
import torch
from adcore.components.standardize import FeatureStandardizer


def test_streamed_batches_give_the_statistics_of_the_whole_set():
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(50, 3, 4, 5, generator=generator) * torch.arange(1.0, 61.0).reshape(3, 4, 5) + 7.0
    standardizer = FeatureStandardizer((3, 4, 5))
    for chunk in data.split(8):  # uneven last batch
        standardizer.update(chunk)
    standardizer.finish()
    torch.testing.assert_close(standardizer.mean, data.mean(dim=0))
    torch.testing.assert_close(standardizer.std, data.std(dim=0, unbiased=False))
    out = standardizer(data)
    torch.testing.assert_close(out.mean(dim=0), torch.zeros(3, 4, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=0, unbiased=False), torch.ones(3, 4, 5), atol=1e-4, rtol=0)


def test_per_channel_vectors_and_the_relative_floor():
    vectors = torch.stack([torch.randn(100), torch.full((100,), 3.0)], dim=1)  # channel 1 is constant
    plain = FeatureStandardizer((2,))
    plain.update(vectors)
    plain.finish()
    assert plain.std[1].item() == pytest.approx(1e-6)  # a constant channel: no division by 0
    floored = FeatureStandardizer((2,), relative_floor=0.5)
    floored.update(vectors)
    floored.finish()
    # At least half the mean std: a tiny deviation of the constant channel stays moderate.
    assert floored.std[1].item() == pytest.approx(0.5 * plain.std[0].item() / 2, rel=1e-4)
    assert floored(torch.tensor([[0.0, 3.01]]))[0, 1].abs() < 0.1


def test_errors_name_the_model_and_the_problem():
    standardizer = FeatureStandardizer((4,), name="mymodel")
    with pytest.raises(ValueError, match="mymodel: no training features"):
        standardizer.finish()
    with pytest.raises(ValueError, match=r"mymodel: samples of shape \(5,\)"):
        standardizer.update(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="relative_floor"):
        FeatureStandardizer((4,), relative_floor=-1)


def test_statistics_are_buffers_saved_with_the_state():
    standardizer = FeatureStandardizer((2, 3))
    standardizer.update(torch.randn(10, 2, 3))
    standardizer.finish()
    restored = FeatureStandardizer((2, 3))
    restored.load_state_dict(standardizer.state_dict())
    torch.testing.assert_close(restored.mean, standardizer.mean)
    torch.testing.assert_close(restored.std, standardizer.std)
