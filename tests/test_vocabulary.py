"""One name per idea across plugins; old names still work (command lines, old checkpoints)."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from adcore.checkpoint import METADATA_KEY, load_checkpoint, save_checkpoint
from adcore.config import PARAMETER_ALIASES, canonical_parameters
from adcore.plugins import create_detector
from tiny_detectors import TinyGrad, TinyGradConfig


def test_aliases_map_to_names_every_plugin_uses():
    import attrs
    from adcore.plugins import PluginRegistry

    registry = PluginRegistry()
    names = {
        field.name
        for detector in registry.detectors
        for field in attrs.fields(registry.detector_class(detector).Config)
    }
    assert set(PARAMETER_ALIASES.values()) <= names
    assert not set(PARAMETER_ALIASES) & names, "no plugin may keep an old name as a field"


def test_an_old_name_on_the_command_line_is_accepted_with_a_warning():
    with pytest.warns(DeprecationWarning, match="'lr' is now called 'learning_rate'"):
        assert canonical_parameters(TinyGradConfig, {"lr": 0.3}) == {"learning_rate": 0.3}
    with pytest.raises(ValueError, match="given twice"):
        canonical_parameters(TinyGradConfig, {"lr": 0.3, "learning_rate": 0.1})


def test_a_checkpoint_written_with_old_names_still_loads(tiny_registry, tmp_path):
    detector = create_detector("tiny-grad", learning_rate=0.3)
    detector.is_fitted.fill_(True)
    path = save_checkpoint(detector, tmp_path / "model.safetensors")
    # Rewrite the header as an earlier adcore wrote it: 'lr', and a config seed.
    tensors = safetensors.torch.load_file(str(path))
    with safetensors.safe_open(str(path), framework="pt") as handle:
        metadata = json.loads(handle.metadata()[METADATA_KEY])
    config = metadata["config"]
    config["lr"] = config.pop("learning_rate")
    config["seed"] = 0
    old = tmp_path / "old.safetensors"
    safetensors.torch.save_file(tensors, str(old), metadata={METADATA_KEY: json.dumps(metadata)})
    restored, _ = load_checkpoint(old)
    assert isinstance(restored, TinyGrad) and restored.config.learning_rate == 0.3
    assert torch.equal(restored.net.weight, detector.net.weight)


def test_typed_parameters_get_one_clear_error():
    with pytest.raises(ValueError, match="tiny-grad: epochs must be an integer, got 'many'"):
        TinyGrad.from_config_dict({"epochs": "many"})
    assert TinyGrad.from_config_dict({"epochs": "3", "noise": 1}).config.epochs == 3
