"""Export a fitted detector to one self-describing file: ONNX, OpenVINO IR or TorchScript.

The exported graph is the detector's ``forward`` (traced, whatever the model) wrapped so that
a deployment needs nothing from adcore:

* **input** ``image``: float32 ``(N, 3, H, W)``, RGB in 0..1, already resized to the model's
  input size (``H, W``), *not* normalised: the mean/std normalisation is inside the graph;
* **outputs** ``pred_score`` ``(N,)`` and ``anomaly_map`` ``(N, 1, H, W)`` in raw units, and
  ``normalized_score`` / ``normalized_map`` in 0..1 with the calibrated threshold at 0.5
  (:class:`adcore.postprocess.PostProcessor`'s normalisation). An output the detector cannot
  give (no map, no calibration) is left out, and the metadata lists the outputs present.

The preprocessing (input size, mean, std, how to resize), the thresholds and min/max, the
detector's name, config and versions travel inside the file's own metadata (ONNX
``metadata_props``, OpenVINO ``rt_info``, TorchScript ``_extra_files``) under the key
``adcore``, as JSON. The light runtime (``adcore-runtime``) reads it from there.

Nothing heavy is imported here: ``from adcore.export import export_detector`` costs nothing
until it is called.
"""

from __future__ import annotations

from typing import Any

FORMATS = ("onnx", "openvino", "torchscript")
METADATA_KEY = "adcore"

_LAZY = {
    "ExportError": "adcore.export.exporter",
    "ExportResult": "adcore.export.exporter",
    "export_detector": "adcore.export.exporter",
    "export_checkpoint": "adcore.export.exporter",
    "read_export_metadata": "adcore.export.exporter",
    "ExportGraph": "adcore.export.graph",
}

__all__ = [
    "FORMATS",
    "METADATA_KEY",
    "ExportError",
    "ExportGraph",
    "ExportResult",
    "export_checkpoint",
    "export_detector",
    "read_export_metadata",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adcore.export' has no attribute {name!r}")
