"""Multi-scale features from any timm backbone, with offline-resolved weights.

``create_feature_extractor("tf_efficientnet_lite0", layers=(1, 2, 3))`` builds the timm
model, loads pretrained weights resolved by :func:`resolve_weights`, prunes every stage
after the deepest requested one plus the classifier head (they would cost time for
nothing), and freezes it unless asked otherwise. ``layers`` index timm's ``feature_info``,
the same indices as timm's ``features_only=True, out_indices=...``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import timm
import torch
from torch import nn

from adcore.backbones.batchnorm_folding import fold_batch_norms
from adcore.backbones.weights import AUTO, ResolvedWeights, resolve_weights


class FeatureMaps(nn.Module):
    """What every feature extractor shares: ``channels``/``strides``, frozen or trainable, channels-last.

    Subclasses set ``model``, ``_channels``, ``_strides`` and ``frozen`` and implement
    ``_features(images, model)``. A frozen extractor runs a copy of ``model`` with its batch
    norms folded into the convolutions (:mod:`adcore.backbones.batchnorm_folding`): the same
    features, faster; ``model`` itself, its state dict and checkpoints are unchanged.
    """

    _channels: list[int]
    _strides: list[int]
    frozen: bool

    @property
    def channels(self) -> list[int]:
        return list(self._channels)

    @property
    def strides(self) -> list[int]:
        return list(self._strides)

    def train(self, mode: bool = True) -> FeatureMaps:
        # A frozen backbone keeps its batch-norm statistics even while its owner trains.
        super().train(mode and not self.frozen)
        return self

    def _features(self, images: torch.Tensor, model: nn.Module) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        images = images.contiguous(memory_format=torch.channels_last)
        if self.frozen:
            with torch.no_grad():
                return self._features(images, self._folded_model(images))
        return self._features(images, self.model)

    def _folded_model(self, images: torch.Tensor) -> nn.Module:
        """``model`` with its batch norms folded, rebuilt whenever its tensors or device change."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
            return self.model  # inside folded_for_tracing, ``model`` is the folded copy eager runs
        tensors = [*self.model.parameters(), *self.model.buffers()]
        key = (images.device, tuple((id(t), t._version) for t in tensors))
        cached = self.__dict__.get("_folded")  # a plain attribute: not a submodule, not in the state dict
        if cached is not None and cached[0] == key:
            return cached[1]
        example = images[:1].float()
        try:
            folded, _count = fold_batch_norms(self.model, lambda model: self._features(example, model))
        except ValueError as exc:
            warnings.warn(f"batch norms not folded ({exc}): the backbone runs unchanged", stacklevel=2)
            folded = self.model
        self.__dict__["_folded"] = (key, folded)
        return folded


@contextlib.contextmanager
def folded_for_tracing(module: nn.Module, example: torch.Tensor) -> Iterator[None]:
    """Within: every frozen extractor in ``module`` holds, as ``model``, the folded copy it runs eagerly.

    Exporters trace inside this, so an exported graph computes what eager PyTorch computes
    (a graph of the plain network differs from it by float rounding, which a deep network can
    grow past an export check's tolerance). ``example`` (an input batch of ``module``) is run
    once to build the copies. The plain networks are back in place on exit.
    """
    with torch.no_grad():
        module(example[:1])
    swapped = []
    for extractor in module.modules():
        if isinstance(extractor, FeatureMaps) and extractor.frozen and "_folded" in extractor.__dict__:
            swapped.append((extractor, extractor.model))
    try:
        for extractor, _plain in swapped:
            extractor.model = extractor.__dict__["_folded"][1]
        yield
    finally:
        for extractor, plain in swapped:
            extractor.model = plain


class TimmFeatureExtractor(FeatureMaps):
    """A :class:`adcore.protocols.FeatureExtractor` over a (pruned) timm model."""

    def __init__(
        self,
        model: nn.Module,
        layers: tuple[int, ...],
        channels: list[int],
        strides: list[int],
        uses_intermediates: bool,
        weights: ResolvedWeights,
        frozen: bool,
        mean,
        std,
    ) -> None:
        super().__init__()
        # channels_last roughly halves CPU convolution time (oneDNN's native layout).
        self.model = model.to(memory_format=torch.channels_last)
        self.layers = layers
        self._channels = channels
        self._strides = strides
        self.uses_intermediates = uses_intermediates
        self.frozen = frozen
        self.weights_source = weights.source
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if frozen:
            self.model.eval()
            self.model.requires_grad_(False)

    def _features(self, images: torch.Tensor, model: nn.Module) -> list[torch.Tensor]:
        if self.uses_intermediates:
            return list(model.forward_intermediates(images, indices=list(self.layers), intermediates_only=True))
        return list(model(images))



def _load(model: nn.Module, resolved: ResolvedWeights, backbone: str) -> None:
    """Load resolved weights; every tensor the (pruned) model keeps must be present."""
    if resolved.state_dict is None:
        return
    try:
        missing, _unexpected = model.load_state_dict(resolved.state_dict, strict=False)
    except RuntimeError as exc:  # same names, other shapes: weights of another architecture
        raise ValueError(f"weights from {resolved.source} do not fit '{backbone}': {exc}") from None
    if missing:
        raise ValueError(
            f"weights from {resolved.source} do not fit '{backbone}': missing {len(missing)} tensors "
            f"(first: {missing[:3]})"
        )


def create_feature_extractor(
    backbone: str,
    layers: Sequence[int],
    weights: str | None = AUTO,
    allow_download: bool | None = None,
    frozen: bool = True,
) -> TimmFeatureExtractor:
    """Build a feature extractor; ``weights``: "auto", a file path, or "none" (random, on request)."""
    resolved = resolve_weights(backbone, weights, allow_download)
    layers = tuple(int(i) for i in layers)
    pretrained = resolved.source == "hub"
    model = timm.create_model(backbone, pretrained=pretrained)
    if hasattr(model, "forward_intermediates") and hasattr(model, "prune_intermediate_layers"):
        info = model.feature_info
        if max(layers) >= len(info) or min(layers) < 0:
            raise ValueError(f"'{backbone}' has feature levels 0..{len(info) - 1}, not {layers}")
        channels = [info[i]["num_chs"] for i in layers]
        strides = [info[i]["reduction"] for i in layers]
        model.prune_intermediate_layers(indices=list(layers), prune_norm=True, prune_head=True)
        uses_intermediates = True
    else:  # older timm architectures: the generic feature wrapper (no pruning)
        model = timm.create_model(backbone, features_only=True, out_indices=layers, pretrained=pretrained)
        channels, strides = list(model.feature_info.channels()), list(model.feature_info.reduction())
        uses_intermediates = False
    _load(model, resolved, backbone)
    if resolved.normalization is not None:
        mean, std = resolved.normalization
    else:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
    return TimmFeatureExtractor(model, layers, channels, strides, uses_intermediates, resolved, frozen, mean, std)
