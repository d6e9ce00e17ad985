"""Checkpoints: every tensor in safetensors, everything else as JSON in its header.

One file, written atomically. Loading reads tensors and JSON only, never unpickles, so a
checkpoint from a stranger cannot run code. The JSON names the detector and the plugin
(and its version) that made it, its config, thresholds and the run that produced it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

import adcore
from adcore.backbones.weights import restoring_from_checkpoint
from adcore.config import to_size
from adcore.detector import AnomalyDetector
from adcore.io import atomic_write
from adcore.plugins import PluginError, PluginRegistry, get_registry
from adcore.protocols import DetectorOutput

FORMAT_VERSION = 1
METADATA_KEY = "adcore"
#: The adcore metadata is a few kilobytes; refuse strings far beyond that before parsing them.
MAX_METADATA_BYTES = 10_000_000
#: Input sizes a checkpoint may ask for, checked before anything is built or allocated.
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 8, 4096
MAX_IMAGE_PIXELS = 4096 * 4096


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or does not describe a loadable detector."""


def _error(path: Path, message: str) -> CheckpointError:
    """One line naming the file, of bounded length (the message may quote the file's own values)."""
    text = re.sub(r"\s*[\r\n]+\s*", " ", f"{path}: {message}")
    return CheckpointError(text if len(text) <= 2000 else text[:1997] + "...")


def _short(value: Any, limit: int = 80) -> str:
    """A value from an untrusted header, quoted briefly."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    return text


def save_checkpoint(detector: AnomalyDetector, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write the detector's tensors and metadata; external modules are recorded, not copied."""
    tensors, header = _checkpoint_contents(detector, extra)
    return _write(path, tensors, header)


def start_checkpoint(
    detector: AnomalyDetector, path: str | os.PathLike, extra: dict[str, Any] | None = None
) -> Future[Path]:
    """:func:`save_checkpoint` with the file written by a background thread; ``.result()`` waits.

    The tensors and metadata are copied now, so the detector may be used (scoring, evaluating)
    while the file is written: a PaDiM checkpoint is ~160 MB, a few hundred milliseconds of
    writing that safetensors does without holding the GIL. A failed write raises from ``.result()``.
    """
    tensors, header = _checkpoint_contents(detector, extra)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adcore-checkpoint")
    try:
        return executor.submit(_write, path, tensors, header)
    finally:
        executor.shutdown(wait=False)  # the thread ends once the file is written


def _write(path: str | os.PathLike, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> Path:
    return atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=header))


def _checkpoint_contents(
    detector: AnomalyDetector, extra: dict[str, Any] | None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Copies of the detector's tensors and the JSON header, independent of the detector from now on."""
    registry = get_registry()
    plugin = registry.plugin_of(detector.name)
    card = registry.detectors.get(detector.name)
    metadata = {
        "format_version": FORMAT_VERSION,
        "adcore_version": adcore.__version__,
        "detector": detector.name,
        "plugin": plugin.name if plugin else None,
        "plugin_distribution": plugin.distribution if plugin else None,
        "plugin_version": plugin.version if plugin else None,
        "config": detector.config_dict(),
        "post_processing": detector.post_processor.summary(),
        "card": card.to_json() if card is not None else None,
        "external_modules": detector.external_modules(),
        **(extra or {}),
    }
    # safetensors refuses shared or strided storage: store contiguous copies.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in detector.checkpoint_state().items()}
    header = {METADATA_KEY: json.dumps(metadata, default=str)}
    return tensors, header


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The adcore metadata of a checkpoint, checked to be a JSON object with an integer format_version.

    safetensors itself bounds the header (100 MB) and checks that every tensor's bytes lie
    inside the file; the adcore string is refused above ``MAX_METADATA_BYTES`` before parsing.
    """
    path = Path(path)
    if not path.exists():
        raise _error(path, "checkpoint file does not exist")
    if not path.is_file():
        raise _error(path, "checkpoint is not a regular file")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes a message naming the file
        raise _error(path, f"not a safetensors checkpoint ({_describe(exc)})") from None
    if METADATA_KEY not in header:
        raise _error(path, "safetensors file has no adcore metadata; was it written by adcore?")
    text = header[METADATA_KEY]
    if len(text) > MAX_METADATA_BYTES:
        raise _error(path, f"adcore metadata is {len(text):,} characters, over the {MAX_METADATA_BYTES:,} limit")
    try:
        metadata = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise _error(path, f"adcore metadata is not valid JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise _error(path, f"adcore metadata must be a JSON object, found {type(metadata).__name__}")
    version = metadata.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise _error(path, f"format_version must be an integer, found {_short(version)}")
    return metadata


def _parse_size(value: Any, exact: bool) -> tuple[int, int] | None:
    """``(height, width)`` from a config value (as the configs convert it) or, ``exact``, a pair of ints."""
    if exact:
        ok = isinstance(value, (tuple, list)) and len(value) == 2
        return tuple(value) if ok and all(type(v) is int for v in value) else None
    try:
        return to_size(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _check_image_size(path: Path, value: Any, where: str, exact: bool = False) -> tuple[int, int]:
    """Refuse input sizes no detector is fitted at, before they can allocate anything."""
    size = _parse_size(value, exact)
    if size is None:
        raise _error(path, f"{where} {_short(value)} is not an image size (height, width)")
    height, width = size
    if min(height, width) < MIN_IMAGE_SIDE or max(height, width) > MAX_IMAGE_SIDE or height * width > MAX_IMAGE_PIXELS:
        raise _error(
            path,
            f"{where} {height}x{width} is outside the supported range (each side {MIN_IMAGE_SIDE}..{MAX_IMAGE_SIDE}, "
            f"at most {MAX_IMAGE_PIXELS:,} pixels)",
        )
    return size


def _check_post_processor(path: Path, detector: AnomalyDetector) -> None:
    for name, value in detector.post_processor.named_buffers():
        if value.numel() != 1 or not value.dtype.is_floating_point:
            raise _error(
                path,
                f"post_processor.{name} must be one floating-point number, found {value.dtype} of shape "
                f"{tuple(value.shape)}",
            )


def _smoke_test(detector: AnomalyDetector, size: tuple[int, int], device: str | torch.device) -> None:
    """Score one black image (a clip of black frames for a video detector) at the checkpoint's input size.

    Any failure means tensors and metadata disagree.
    """
    height, width = size
    length = max(1, int(detector.input_spec.clip_length))
    shape = (1, 3, height, width) if length == 1 else (1, length, 3, height, width)
    with torch.inference_mode():
        output = detector.predict(torch.zeros(shape, device=device))
        if not isinstance(output, DetectorOutput):
            raise TypeError(f"predict returned {type(output).__name__}, not DetectorOutput")
        score, anomaly_map = output.pred_score, output.anomaly_map
        if not isinstance(score, torch.Tensor) or tuple(score.shape) != (1,) or not score.dtype.is_floating_point:
            raise ValueError(f"pred_score of one image is {_short(getattr(score, 'shape', score))}, not one float")
        if anomaly_map is not None:
            if not isinstance(anomaly_map, torch.Tensor) or tuple(anomaly_map.shape) != (1, 1, height, width):
                shape = tuple(getattr(anomaly_map, "shape", ()))
                raise ValueError(f"anomaly_map of one {height}x{width} image has shape {shape}")
        post = detector.post_processor
        if post.is_calibrated:
            post.normalize_scores(score)
        if anomaly_map is not None and not bool(torch.isnan(post.pixel_threshold)):
            post.normalize_maps(anomaly_map)


def load_checkpoint(
    path: str | os.PathLike, registry: PluginRegistry | None = None, device: str | torch.device = "cpu"
) -> tuple[AnomalyDetector, dict[str, Any]]:
    """Rebuild the detector (via its plugin) and load its tensors; returns (detector, metadata).

    Every problem with the file is one :class:`CheckpointError` naming it. A fitted detector
    scores one black image at its input size before it is returned, so a file whose tensors
    and metadata disagree fails here rather than at its first prediction.
    """
    path = Path(path)
    metadata = read_metadata(path)
    if metadata.get("format_version", 0) > FORMAT_VERSION:
        raise _error(path, f"written by a newer adcore (format {metadata['format_version']}); upgrade adcore")
    registry = registry or get_registry()
    name = metadata.get("detector")
    if not isinstance(name, str):
        found = "no 'detector' key" if "detector" not in metadata else f"found {_short(name)}"
        raise _error(path, f"the adcore metadata names no detector ({found})")
    try:
        detector_class = registry.detector_class(name)
    except PluginError as exc:
        distribution = metadata.get("plugin_distribution")
        if name not in registry.detectors and isinstance(distribution, str) and distribution:
            version = metadata.get("plugin_version")
            raise _error(
                path,
                f"detector {_short(name)} is not installed; install {distribution}"
                + (f" (the checkpoint was written by version {version})" if isinstance(version, str) else ""),
            ) from None
        raise _error(path, str(exc)) from None
    plugin = registry.plugin_of(name)
    written_by = metadata.get("plugin_version")
    if plugin and plugin.version and isinstance(written_by, str) and written_by and plugin.version != written_by:
        writer = f"{_short(metadata.get('plugin_distribution'))} {_short(written_by)}"
        message = f"written by {writer}, loading with {plugin.version}"
        warnings.warn(str(_error(path, message)), stacklevel=2)
    config = metadata.get("config", {})
    if not isinstance(config, dict):
        raise _error(path, f"the detector's config is not a JSON object (found {type(config).__name__})")
    if "image_size" in config:  # before building: a detector may allocate at its input size
        _check_image_size(path, config["image_size"], "config image_size")
    external = metadata.get("external_modules")
    if external is not None and not (
        isinstance(external, dict) and all(isinstance(v, str) for v in external.values())
    ):
        raise _error(path, f"external_modules must be an object of module sources, found {_short(external)}")
    # External modules (large frozen networks) are not in the file: resolve them again, offline first.
    restoring = contextlib.nullcontext() if external else restoring_from_checkpoint()
    try:
        with restoring:
            detector = detector_class.from_config_dict(config, strict=False)
    except Exception as exc:  # noqa: BLE001 - plugin code: an unknown backbone, a bad value, ...
        raise _error(path, f"cannot rebuild detector '{name}' from its config ({_describe(exc)})") from None
    try:
        tensors = safetensors.torch.load_file(str(path), device=str(device))
        detector.load_fitted_state(tensors)
        detector = detector.to(device).eval()
    except Exception as exc:  # noqa: BLE001 - any mismatch becomes a message naming the file
        raise _error(path, f"tensors do not fit detector '{name}' ({_describe(exc)})") from None
    _check_post_processor(path, detector)
    try:
        size = detector.input_spec.image_size
    except Exception as exc:  # noqa: BLE001 - a plugin property computed from the file's config
        raise _error(path, f"detector '{name}' has no usable input size ({_describe(exc)})") from None
    size = _check_image_size(path, size, "input size", exact=True)
    try:
        if detector.is_fitted.numel() != 1:
            raise ValueError(f"is_fitted has shape {tuple(detector.is_fitted.shape)}")
        if bool(detector.is_fitted) or not detector.needs_fit:  # an unfitted file loads, and says so at predict
            _smoke_test(detector, size, device)
    except Exception as exc:  # noqa: BLE001 - a reshaped buffer, a changed image_size, ...
        raise _error(
            path, f"the checkpoint's tensors and metadata disagree ({type(exc).__name__}: {_describe(exc)})"
        ) from None
    return detector, metadata
