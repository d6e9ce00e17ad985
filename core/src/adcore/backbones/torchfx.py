"""Features from any traceable network, named by its graph nodes (torch.fx).

:func:`create_feature_extractor` (the timm extractor) takes stage indices of timm's
``feature_info``. This one takes the *names of graph nodes* instead, as
``torchvision.models.feature_extraction.create_feature_extractor`` does, so it reaches any
intermediate output of any network that ``torch.fx`` can trace: a timm model, a torchvision
model, or a user's own ``nn.Module``::

    extractor = create_torchfx_extractor("torchvision:resnet18", ["layer2", "layer3"], weights="auto")
    extractor = create_torchfx_extractor("timm:tf_efficientnet_lite0", ["blocks.2", "blocks.4"])
    extractor = create_torchfx_extractor(MyNet(), ["body.3"], weights="my_net.safetensors")
    graph_node_names("torchvision:resnet18")  # the names one may ask for

Steps:

1. Build the network: ``"timm:NAME"`` with timm, ``"torchvision:NAME"`` with
   ``torchvision.models.get_model``, or take the given module.
2. Load its weights, never silently random (the core's resource rules, see ``docs/weights.md``):
   ``"auto"`` resolves the resource ``timm:NAME`` (:func:`resolve_weights`: a provider, or
   timm's hub when downloads are allowed) or ``torchvision:NAME`` (a provider, or
   torchvision's default weights when downloads are allowed); a path reads that file
   (``.safetensors`` or ``.pt``/``.pth``, tensors only); ``"none"`` keeps the random
   initialisation, only because it was asked for. A user's module comes with its own
   parameters: ``"auto"``/``"none"`` keep them, a path loads into it. Keys are the full
   network's names; every tensor the extractor keeps must be in the file.
3. Trace the network up to the requested nodes (the parts after them are dropped from the
   graph, so they cost nothing), with timm's list of modules and functions that must not be
   traced through.
4. Measure ``channels`` and ``strides`` with one dry run on a small input (eval mode, no
   gradients): each node must give a (N, C, H, W) map.

Within :func:`adcore.backbones.weights.restoring_from_checkpoint` nothing is resolved or
read: the checkpoint supplies every tensor (as for the timm extractor). Frozen extractors
run under ``no_grad`` and stay in eval mode; ``frozen=False`` makes them trainable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from adcore.backbones.feature_extractor import FeatureMaps
from adcore.backbones.weights import (
    AUTO,
    RANDOM_INIT,
    ResolvedWeights,
    WeightsNotFoundError,
    _checkpoint_restore,
    load_weights_file,
    resolve_weights,
)
from adcore.resources import ResourceNotFoundError, resolve_resource

__all__ = ["TorchFXFeatureExtractor", "create_torchfx_extractor", "graph_node_names"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _tracer_kwargs() -> dict:
    """Modules and functions fx must treat as opaque: timm's list (harmless for other networks)."""
    try:
        from timm.models._features_fx import get_notrace_functions, get_notrace_modules
    except ImportError:  # pragma: no cover - timm is a core dependency
        return {}
    return {"leaf_modules": list(get_notrace_modules()), "autowrap_functions": list(get_notrace_functions())}


def _split(backbone: str) -> tuple[str, str]:
    kind, sep, name = backbone.partition(":")
    if not sep or kind not in ("timm", "torchvision") or not name:
        raise ValueError(f"backbone must be 'timm:NAME', 'torchvision:NAME' or an nn.Module, got {backbone!r}")
    return kind, name


def _torchvision_weights(name: str, weights: str | None, allow_download: bool | None) -> ResolvedWeights:
    """Resolve the resource ``torchvision:NAME`` like timm weights: path, provider, download, error."""
    if _checkpoint_restore.get():
        return ResolvedWeights(source="checkpoint")
    if weights is None or weights == RANDOM_INIT:
        return ResolvedWeights(source="random")
    if weights != AUTO:
        return ResolvedWeights(source=f"file:{weights}", state_dict=load_weights_file(weights))

    def download() -> dict:
        import torchvision

        return torchvision.models.get_model_weights(name).DEFAULT.get_state_dict(progress=False)

    try:
        resolved = resolve_resource(
            f"torchvision:{name}",
            download=download,
            allow_download=allow_download,
            hint="pass a weights file (weights=FILE) or install a provider of this resource",
        )
    except ResourceNotFoundError as exc:
        raise WeightsNotFoundError(f"backbone 'torchvision:{name}': {exc}") from None
    normalization = getattr(resolved.provider, "normalization", None)
    source = "hub" if resolved.source == "download" else resolved.source
    return ResolvedWeights(
        source=source,
        state_dict=resolved.value,
        normalization=normalization(resolved.resource_id) if normalization else None,
    )


def _build(
    backbone: str | nn.Module, weights: str | os.PathLike | None, allow_download: bool | None
) -> tuple[nn.Module, ResolvedWeights, tuple, tuple]:
    """The full network, its resolved weights (not loaded yet) and its input normalisation."""
    weights = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
    if isinstance(backbone, nn.Module):
        if _checkpoint_restore.get():
            resolved = ResolvedWeights(source="checkpoint")
        elif weights is None or weights in (AUTO, RANDOM_INIT):
            resolved = ResolvedWeights(source="module")  # the parameters the caller built it with
        else:
            resolved = ResolvedWeights(source=f"file:{weights}", state_dict=load_weights_file(weights))
        return backbone, resolved, IMAGENET_MEAN, IMAGENET_STD
    kind, name = _split(backbone)
    if kind == "timm":
        import timm

        resolved = resolve_weights(name, weights, allow_download)
        model = timm.create_model(name, pretrained=resolved.source == "hub")
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
    else:
        import torchvision

        resolved = _torchvision_weights(name, weights, allow_download)
        model = torchvision.models.get_model(name, weights=None)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    if resolved.normalization is not None:
        mean, std = resolved.normalization
    return model, resolved, mean, std


def graph_node_names(backbone: str | nn.Module, train: bool = False) -> list[str]:
    """The node names one may ask for, in execution order (eval-mode graph unless ``train``)."""
    from torchvision.models.feature_extraction import get_graph_node_names

    model = backbone if isinstance(backbone, nn.Module) else _build(backbone, RANDOM_INIT, None)[0]
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=_tracer_kwargs())
    return list(train_nodes if train else eval_nodes)


class TorchFXFeatureExtractor(FeatureMaps):
    """A :class:`adcore.protocols.FeatureExtractor` over an fx-traced network's named nodes."""

    def __init__(
        self,
        graph: nn.Module,
        return_nodes: tuple[str, ...],
        weights_source: str,
        frozen: bool,
        mean,
        std,
        probe_size: tuple[int, int] = (128, 128),
    ) -> None:
        super().__init__()
        # channels_last: oneDNN's native layout on CPU, as the timm extractor.
        self.model = graph.to(memory_format=torch.channels_last)
        self.return_nodes = return_nodes
        self.weights_source = weights_source
        self.frozen = frozen
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if frozen:
            self.model.eval()
            self.model.requires_grad_(False)
        self._channels, self._strides = self._dry_run(probe_size)

    def _dry_run(self, probe_size: tuple[int, int]) -> tuple[list[int], list[int]]:
        """Channels and strides of every node, from one small input (eval, no gradients)."""
        was_training = self.model.training
        self.model.eval()  # batch-norm statistics must not move
        try:
            parameter = next(iter(self.model.parameters()), None)
            device = parameter.device if parameter is not None else torch.device("cpu")
            with torch.no_grad():
                outputs = self._features(torch.zeros(1, 3, *probe_size, device=device), self.model)
        finally:
            self.model.train(was_training)
        channels, strides = [], []
        for node, output in zip(self.return_nodes, outputs):
            if not isinstance(output, torch.Tensor) or output.ndim != 4:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise ValueError(f"node {node!r} gives {shape}, not a (N, C, H, W) feature map")
            channels.append(int(output.shape[1]))
            strides.append(max(1, round(probe_size[0] / output.shape[2])))
        return channels, strides

    def _features(self, images: torch.Tensor, model: nn.Module) -> list[torch.Tensor]:
        outputs = model(images)
        return [outputs[node] for node in self.return_nodes]



def _load(model: nn.Module, graph: nn.Module, resolved: ResolvedWeights, name: str) -> None:
    """Load into the full network; every tensor the traced graph keeps must come from the file."""
    if resolved.state_dict is None:
        return
    try:
        _missing, _unexpected = model.load_state_dict(resolved.state_dict, strict=False)
    except RuntimeError as exc:  # same names, other shapes
        raise ValueError(f"weights from {resolved.source} do not fit {name}: {exc}") from None
    missing = [key for key in graph.state_dict() if key not in resolved.state_dict]
    if missing:
        raise ValueError(
            f"weights from {resolved.source} do not fit {name}: missing {len(missing)} tensors (first: {missing[:3]})"
        )


def create_torchfx_extractor(
    backbone: str | nn.Module,
    return_nodes: Sequence[str] | Mapping[str, str],
    weights: str | os.PathLike | None = AUTO,
    allow_download: bool | None = None,
    frozen: bool = True,
    probe_size: int | tuple[int, int] = 128,
) -> TorchFXFeatureExtractor:
    """Feature maps at ``return_nodes`` of ``backbone`` ("timm:NAME", "torchvision:NAME" or a module).

    ``weights``: "auto" (a provider, or a download when allowed), a file path, or "none"
    (random, on request); a module keeps its own parameters unless given a path.
    ``return_nodes`` are graph node names (:func:`graph_node_names`), in the order the maps
    are returned; a mapping's keys are used. ``probe_size`` is the side (or (H, W)) of the
    dry run that measures channels and strides: a multiple of the deepest stride.
    """
    from torchvision.models.feature_extraction import create_feature_extractor as fx_extractor

    nodes = tuple(return_nodes.keys() if isinstance(return_nodes, Mapping) else return_nodes)
    if not nodes or not all(isinstance(node, str) and node for node in nodes):
        raise ValueError(f"return_nodes must be a non-empty list of graph node names, got {return_nodes!r}")
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"return_nodes has duplicates: {nodes}")
    label = backbone if isinstance(backbone, str) else type(backbone).__name__
    model, resolved, mean, std = _build(backbone, weights, allow_download)
    model.eval()  # trace the inference graph (dropout, batch norm in eval)
    tracer_kwargs = _tracer_kwargs()
    try:
        graph = fx_extractor(model, return_nodes={node: node for node in nodes}, tracer_kwargs=tracer_kwargs)
    except ValueError as exc:  # torchvision names the unknown node; add where to find the valid ones
        raise ValueError(f"{label}: {exc} (see adcore.backbones.torchfx.graph_node_names)") from None
    _load(model, graph, resolved, label)  # the graph holds the full model's own modules: it sees them
    size = (probe_size, probe_size) if isinstance(probe_size, int) else tuple(int(s) for s in probe_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"probe_size must be a positive side or (H, W), got {probe_size!r}")
    return TorchFXFeatureExtractor(graph, nodes, resolved.source, frozen, mean, std, size)
