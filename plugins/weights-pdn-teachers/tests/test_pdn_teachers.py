"""The shipped teachers load through adcore's resource lookup and really imitate the backbone.

Strict loading into the PDN proves names and shapes; the correlation test on the 100
held-out ImageNet images (never seen by the distillation) proves the weights carry the
backbone's features, and the same measurement on a random PDN proves it can fail.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from adcore import LazyProvider, resolve_resource
from adcore.plugins import PluginRegistry
from adcore_efficientad.pdn import pdn
from adcore_weights_pdn_teachers import plugin
from adcore_weights_pdn_teachers.files import shipped_teachers
from adcore_weights_pdn_teachers.provider import PdnTeachers

SCRIPT = Path(__file__).parents[1] / "scripts" / "distill_teacher.py"
PROVIDER = PdnTeachers()
IDS = PROVIDER.resources()
#: held-out mean per-channel Pearson r measured by the distillation (README): PDN-S 0.505, PDN-M
#: 0.124; a random PDN gives about 0 (-0.001 for PDN-S, seed 0)
MIN_PEARSON = {"efficientad:pdn_small": 0.45, "efficientad:pdn_medium": 0.08}
MAX_RANDOM_PEARSON = 0.05


def _script():
    spec = importlib.util.spec_from_file_location("distill_teacher", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_teachers_are_shipped_and_registered_without_torch():
    assert shipped_teachers() == ["pdn_small", "pdn_medium"]
    registered = []
    plugin.adcore_register_resources(registered.append)
    (lazy,) = registered
    assert isinstance(lazy, LazyProvider) and lazy.name == "pdn-teachers"
    assert set(lazy.resource_ids) == {"efficientad:pdn_small", "efficientad:pdn_medium"}


@pytest.mark.parametrize("resource_id", IDS)
def test_teacher_loads_strictly_through_the_installed_provider(resource_id):
    resolved = resolve_resource(resource_id, registry=PluginRegistry())
    assert resolved.source == "provider:pdn-teachers"
    size = resource_id.split("_")[-1]
    net = pdn(size)
    net.load_state_dict(resolved.value, strict=True)
    recipe = PROVIDER.recipe(resource_id)
    assert recipe["size"] == size and recipe["backbone"].startswith("tf_efficientnet_lite")
    assert recipe["steps_done"] > 0 and recipe["held_out_images"] == 100


@pytest.fixture(scope="module")
def held_out(shared_dataset):
    """Held-out crops, and the distillation target built exactly as the script builds it."""
    script = _script()
    torch.manual_seed(0)
    recipe = PROVIDER.recipe(IDS[0])
    train, held, _ = script.load_images(shared_dataset("imagenet_samples"))
    target = script.Target(recipe["backbone"], tuple(recipe["levels"]), recipe["crop"])
    make_target = target.projected(train, recipe["seed"])
    big = script.centre_crops(held, 2 * recipe["crop"])
    small = script.normalise(
        F.interpolate(big, scale_factor=0.5, mode="bilinear", antialias=True), script.IMAGENET_MEAN, script.IMAGENET_STD
    )
    return script, small, make_target(big)


def _mean_pearson(script, net, small, target) -> float:
    with torch.no_grad():  # in chunks: PDN-M's first layer on 100 crops at once would take 1.6 GB
        features = torch.cat([net.eval()(chunk) for chunk in small.split(10)])
    return float(script.pearson_per_channel(features, target).mean())


@pytest.mark.parametrize("resource_id", IDS)
def test_teacher_features_correlate_with_the_backbone_on_held_out_images(held_out, resource_id):
    script, small, target = held_out
    size = resource_id.split("_")[-1]
    assert PROVIDER.recipe(resource_id)["backbone"] == PROVIDER.recipe(IDS[0])["backbone"]
    teacher = pdn(size)
    teacher.load_state_dict(PROVIDER.fetch(resource_id))
    torch.manual_seed(0)
    random = _mean_pearson(script, pdn(size), small, target)
    distilled = _mean_pearson(script, teacher, small, target)
    assert abs(random) < MAX_RANDOM_PEARSON, f"a random PDN should not imitate the backbone (r = {random:.3f})"
    assert distilled > MIN_PEARSON[resource_id], f"{resource_id}: held-out r = {distilled:.3f} (random {random:.3f})"
