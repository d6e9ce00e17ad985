"""The shipped latent model loads through adcore's resource lookup and really reconstructs natural images.

Strict loading into ``DiscreteLatentModel`` proves names and shapes; the reconstruction test
on the 100 held-out ImageNet images (never seen in training) proves the weights learned to
encode and decode, and the same measurement on an untrained model of the same size proves
the test can fail.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from adcore import LazyProvider, resolve_resource
from adcore.plugins import PluginRegistry
from adcore_dsr.latent import DiscreteLatentModel
from adcore_weights_dsr_latent import plugin
from adcore_weights_dsr_latent.files import shipped
from adcore_weights_dsr_latent.provider import DsrLatent

SCRIPT = Path(__file__).parents[1] / "scripts" / "train_latent.py"
RESOURCE = "dsr:vq_latent"


def _script():
    spec = importlib.util.spec_from_file_location("train_latent", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_model_is_shipped_and_registered_without_torch():
    assert shipped() == ["vq_latent"]
    registered = []
    plugin.adcore_register_resources(registered.append)
    (lazy,) = registered
    assert isinstance(lazy, LazyProvider) and lazy.name == "dsr-latent"
    assert lazy.resource_ids == [RESOURCE]


def test_loads_strictly_through_the_installed_provider():
    resolved = resolve_resource(RESOURCE, registry=PluginRegistry())
    assert resolved.source == "provider:dsr-latent"
    model = DiscreteLatentModel.from_state_dict(resolved.value)
    recipe = DsrLatent().recipe(RESOURCE)
    assert model.width == recipe["width"] and model.dim == recipe["dim"]
    assert model.vq_fine.codes == recipe["fine_codes"] and model.vq_coarse.codes == recipe["coarse_codes"]
    assert recipe["steps_done"] > 0 and recipe["held_out_images"] == 100


def test_reconstructs_held_out_images_better_than_an_untrained_model(shared_dataset):
    script = _script()
    recipe = DsrLatent().recipe(RESOURCE)
    _, held = script.load_folder(shared_dataset("imagenet_samples"), recipe["short_side"])
    crops = script.centre_crops(held, recipe["eval_crop"])
    trained = DiscreteLatentModel.from_state_dict(DsrLatent().fetch(RESOURCE))
    torch.manual_seed(0)
    untrained = DiscreteLatentModel(recipe["width"], recipe["dim"], recipe["fine_codes"], recipe["coarse_codes"])
    mse_trained = script.evaluate(trained, crops)["held_out_mse"]
    mse_untrained = script.evaluate(untrained, crops)["held_out_mse"]
    # The recipe's number was measured the same way (fp32 weights, before the fp16 cast).
    assert mse_trained == pytest.approx(recipe["held_out_mse"], rel=0.05)
    assert mse_trained < 0.5 * mse_untrained
