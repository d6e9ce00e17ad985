"""Where WinCLIP's CLIP comes from: a resource, resolved offline first, never random weights.

The resource id is ``open_clip:<model name>`` (``open_clip:ViT-B-16-plus-240`` by default).
:func:`adcore.resolve_resource` looks, in order, at

1. the file the user names (``--weights FILE`` / ``--param weights=FILE``): an open_clip
   checkpoint (``.safetensors``, or ``.bin``/``.pt``/``.pth`` read with ``weights_only=True``),
   loaded strictly by open_clip's own loader (which also converts OpenAI/timm key layouts);
2. a resource provider plugin serving that id (a state dict, or the path of such a file);
3. open_clip's own download of the model's pretrained tag, only when downloads are allowed
   (``--allow-download`` or ``ADCORE_ALLOW_DOWNLOAD=1``);
4. otherwise one clear error that says these options.

``clip_model`` is an open_clip model name, or the path of an open_clip model config JSON
(``embed_dim``, ``vision_cfg``, ``text_cfg``) that is registered with
``open_clip.add_model_config`` under its file stem: the way to run another architecture (the
tests use a tiny one) through exactly the same code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import open_clip
import torch
from adcore import resolve_resource

#: open_clip's pretrained tag downloaded (when allowed) for a model; the paper used LAION-400M weights.
DOWNLOAD_TAGS = {"ViT-B-16-plus-240": "laion400m_e31"}

_REGISTERED: dict[str, str] = {}  # config file -> model name, so a file is added to open_clip once


def open_clip_name(clip_model: str) -> str:
    """The open_clip model name of ``clip_model`` (a built-in name, or a model config JSON file)."""
    if clip_model.endswith(".json"):
        path = Path(clip_model).expanduser().resolve()
        if str(path) in _REGISTERED:
            return _REGISTERED[str(path)]
        if not path.is_file():
            raise ValueError(f"clip_model: no model config file at {path}")
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"clip_model: {path} is not readable JSON ({exc})") from None
        if not (isinstance(config, dict) and all(key in config for key in ("embed_dim", "vision_cfg", "text_cfg"))):
            raise ValueError(
                f"clip_model: {path} is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)"
            )
        open_clip.add_model_config(path)
        _REGISTERED[str(path)] = path.stem
        return path.stem
    if open_clip.get_model_config(clip_model) is None:
        raise ValueError(
            f"clip_model: open_clip has no model {clip_model!r} (pass an open_clip model name, e.g. "
            "ViT-B-16-plus-240, or the path of a model config .json)"
        )
    return clip_model


class _NotRandom(logging.Filter):
    """Hides open_clip's 'initialized randomly' warning: the caller loads every tensor next."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def _architecture(name: str) -> torch.nn.Module:
    # Random initialisation here is only the container: the caller overwrites every tensor
    # (strictly), or fails.
    quiet = _NotRandom()
    logging.getLogger().addFilter(quiet)
    try:
        return open_clip.create_model(name, pretrained=None, pretrained_text=False)
    finally:
        logging.getLogger().removeFilter(quiet)


def load_clip_file(name: str, path: Path) -> torch.nn.Module:
    """The open_clip model ``name`` with the weights in ``path`` (strict: every tensor must fit)."""
    model = _architecture(name)
    try:
        open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a wrong file: say which and why, in one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"weights {path} do not fit open_clip model '{name}': {reason[:300]}") from None
    return model


def load_clip_state(name: str, state: Mapping[str, torch.Tensor], source: str) -> torch.nn.Module:
    model = _architecture(name)
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0]
        raise ValueError(f"weights from {source} do not fit open_clip model '{name}': {reason}") from None
    return model


def resolve_clip(clip_model: str, weights: str) -> tuple[torch.nn.Module, str, str]:
    """(the CLIP model in eval mode with frozen weights, its open_clip name, where its weights came from)."""
    if weights.lower() in ("none", "random"):
        raise ValueError(
            "weights: WinCLIP needs pretrained CLIP weights (random ones make its text prompts meaningless); "
            "pass a weights file or 'auto'"
        )
    name = open_clip_name(clip_model)
    path = None if weights.lower() in ("", "auto") else Path(weights).expanduser()
    tag = DOWNLOAD_TAGS.get(name) or next(iter(open_clip.list_pretrained_tags_by_model(name)), None)

    def download() -> torch.nn.Module:
        return open_clip.create_model(name, pretrained=tag, pretrained_text=False)

    resolved = resolve_resource(
        f"open_clip:{name}",
        path,
        load_path=lambda p: load_clip_file(name, p),
        download=download if tag else None,
        hint=(
            "pass the open_clip weights file with --weights FILE (or --param weights=FILE)"
            + (f", e.g. {name}'s '{tag}' checkpoint (open_clip_model.safetensors)" if tag else "")
            + "; or install a resource provider plugin that serves this id"
        ),
    )
    model: Any = resolved.value
    if isinstance(model, (str, Path)):  # a provider that serves a file
        model = load_clip_file(name, Path(model))
    elif isinstance(model, Mapping):  # a provider that serves a state dict
        model = load_clip_state(name, model, resolved.source)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"{resolved.source} served {type(model).__name__} for open_clip:{name}, not weights")
    model.eval().requires_grad_(False)
    return model, name, resolved.source
