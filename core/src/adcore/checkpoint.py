"""Checkpoints: every tensor in safetensors, everything else as JSON in its header.

One file, written atomically. Loading reads tensors and JSON only, never unpickles, so a
checkpoint from a stranger cannot run code. The JSON names the detector and the plugin
(and its version) that made it, its config, thresholds and the run that produced it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

import adcore
from adcore.backbones.weights import restoring_from_checkpoint
from adcore.detector import AnomalyDetector
from adcore.io import atomic_write
from adcore.plugins import PluginRegistry, get_registry

FORMAT_VERSION = 1
METADATA_KEY = "adcore"


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or does not describe a loadable detector."""


def save_checkpoint(detector: AnomalyDetector, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    registry = get_registry()
    plugin = registry.plugin_of(detector.name)
    metadata = {
        "format_version": FORMAT_VERSION,
        "adcore_version": adcore.__version__,
        "detector": detector.name,
        "plugin": plugin.name if plugin else None,
        "plugin_distribution": plugin.distribution if plugin else None,
        "plugin_version": plugin.version if plugin else None,
        "config": detector.config_dict(),
        "post_processing": detector.post_processor.summary(),
        **(extra or {}),
    }
    # safetensors refuses shared or strided storage: store contiguous copies.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in detector.state_dict().items()}
    header = {METADATA_KEY: json.dumps(metadata, default=str)}
    return atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=header))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes a message naming the file
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({exc})") from None
    if METADATA_KEY not in header:
        raise CheckpointError(f"{path}: safetensors file has no adcore metadata; was it written by adcore?")
    try:
        return json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: adcore metadata is not valid JSON ({exc})") from None


def load_checkpoint(
    path: str | os.PathLike, registry: PluginRegistry | None = None, device: str | torch.device = "cpu"
) -> tuple[AnomalyDetector, dict[str, Any]]:
    """Rebuild the detector (via its plugin) and load its tensors; returns (detector, metadata)."""
    path = Path(path)
    metadata = read_metadata(path)
    if metadata.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer adcore (format {metadata['format_version']}); upgrade adcore"
        )
    registry = registry or get_registry()
    detector_class = registry.detector_class(metadata["detector"])
    plugin = registry.plugin_of(metadata["detector"])
    if plugin and plugin.version and metadata.get("plugin_version") and plugin.version != metadata["plugin_version"]:
        warnings.warn(
            f"{path}: written by {metadata.get('plugin_distribution')} {metadata['plugin_version']}, "
            f"loading with {plugin.version}",
            stacklevel=2,
        )
    with restoring_from_checkpoint():
        detector = detector_class.from_config_dict(metadata["config"])
    try:
        tensors = safetensors.torch.load_file(str(path), device=str(device))
        detector.load_fitted_state(tensors)
    except Exception as exc:  # noqa: BLE001 - any mismatch becomes a message naming the file
        raise CheckpointError(f"{path}: tensors do not fit detector '{metadata['detector']}' ({exc})") from None
    return detector.to(device).eval(), metadata
