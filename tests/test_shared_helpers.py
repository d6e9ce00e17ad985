"""Small core helpers that plugins share: size validators, ranges, weights files, packaged weights."""

import attrs
import pytest
import torch
from adcore import (
    PackagedWeights,
    ResourceNotFoundError,
    WeightsNotFoundError,
    load_weights_file,
    multiple_of,
    to_float_range,
)
from safetensors.torch import save_file


@attrs.define
class _Config:
    size: tuple[int, int] = attrs.field(default=(64, 96), validator=multiple_of(32))
    strength: tuple[float, float] = attrs.field(default=(0.2, 1.0), converter=to_float_range)


def test_multiple_of_and_float_range():
    assert _Config(size=(32, 64)).size == (32, 64)
    with pytest.raises(ValueError, match="size must be a multiple of 32"):
        _Config(size=(32, 48))
    assert _Config(strength="0.1,0.5").strength == (0.1, 0.5)
    with pytest.raises(ValueError, match="low <= high"):
        _Config(strength=(0.9, 0.1))


def test_load_weights_file_unwraps_training_checkpoints_and_refuses_non_dicts(tmp_path):
    weights = {"w": torch.ones(2)}
    torch.save({"model": weights, "epoch": 3}, tmp_path / "ckpt.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    assert torch.equal(load_weights_file(tmp_path / "ckpt.pt")["w"], weights["w"])
    with pytest.raises(WeightsNotFoundError, match="list.pt: expected a state_dict"):
        load_weights_file(tmp_path / "list.pt")


def test_packaged_weights_serves_files_as_float32_with_their_recipe(tmp_path):
    save_file(
        {"w": torch.ones(3, dtype=torch.float16)},
        str(tmp_path / "small.safetensors"),
        metadata={"recipe": '{"steps": 7}'},
    )

    class Provider(PackagedWeights):
        name, prefix, folder, names, distribution = "demo", "demo", tmp_path, ("small", "large"), "adcore-demo"

    provider = Provider()
    assert Provider.shipped() == ["small"] and provider.resources() == ["demo:small"]
    assert provider.fetch("demo:small")["w"].dtype == torch.float32
    assert provider.recipe("demo:small") == {"steps": 7}
    with pytest.raises(ResourceNotFoundError, match="reinstall adcore-demo"):
        provider.path("demo:large")
    with pytest.raises(ValueError, match="not served by demo"):
        provider.path("demo:other")
