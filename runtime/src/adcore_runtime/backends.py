"""Run an exported graph with ONNX Runtime or OpenVINO (or TorchScript, when torch is there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

METADATA_KEY = "adcore"
TORCHSCRIPT_METADATA_FILE = "adcore.json"


class ExportFileError(ValueError):
    """The file is not an adcore export this runtime can run."""


def _metadata(text: Any, path: Path) -> dict:
    if not text:
        raise ExportFileError(f"{path}: no adcore metadata inside (not written by `adcore export`)")
    if isinstance(text, bytes):
        text = text.decode()
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportFileError(f"{path}: adcore metadata is not JSON ({exc})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != "adcore-export":
        raise ExportFileError(f"{path}: metadata is not an adcore export description")
    return metadata


def _missing(package: str, extra: str) -> ImportError:
    return ImportError(f"this file needs {package}: pip install 'adcore-runtime[{extra}]'")


class OnnxBackend:
    """ONNX Runtime on the CPU (or the providers given)."""

    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None, providers: list[str] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise _missing("onnxruntime", "onnx") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        self.metadata = _metadata(self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY), path)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, {self.input_name: images})))


class OpenVinoBackend:
    """OpenVINO on ``device`` (CPU by default), in fp32 unless ``precision`` says otherwise.

    OpenVINO runs in bf16 by default on CPUs that have it; an exported fp32 model is compared
    with PyTorch in fp32, so fp32 is the default here.
    """

    name = "openvino"

    def __init__(
        self,
        path: Path,
        threads: int | None = None,
        device: str = "CPU",
        precision: str | None = "f32",
        hint: str = "LATENCY",
    ) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise _missing("openvino", "openvino") from None
        core = ov.Core()
        model = core.read_model(str(path))
        text = model.get_rt_info([METADATA_KEY]).astype(str) if model.has_rt_info([METADATA_KEY]) else None
        self.metadata = _metadata(text, path)
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
        if device == "CPU" and precision:  # None: OpenVINO's own choice (bf16 where the CPU has AMX)
            config["INFERENCE_PRECISION_HINT"] = precision
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, device, config)
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.request = self.compiled.create_infer_request()

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        result = self.request.infer({0: images})
        return {name: np.array(result[self.compiled.output(name)]) for name in self.output_names}


class TorchScriptBackend:
    """A TorchScript export, when torch happens to be installed (the runtime never requires it)."""

    name = "torchscript"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import torch
        except ImportError:
            raise ImportError(
                "a TorchScript export needs torch; export to onnx or openvino for a torch-free runtime"
            ) from None
        import warnings

        files = {TORCHSCRIPT_METADATA_FILE: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
        self.metadata = _metadata(files[TORCHSCRIPT_METADATA_FILE], path)
        self.output_names = list(self.metadata["outputs"])
        self.threads = threads
        self._torch = torch

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        with self._torch.no_grad():
            outputs = self.module(self._torch.from_numpy(images))
        return {name: value.numpy() for name, value in zip(self.output_names, outputs)}


def open_backend(path: Path, backend: str | None = None, **options: Any):
    """The backend for ``path``: by ``backend`` name, else by suffix (.onnx, .xml, .pt)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such exported model")
    if backend is None:
        suffix = path.suffix.lower()
        backend = {".onnx": "onnxruntime", ".xml": "openvino", ".pt": "torchscript"}.get(suffix)
        if backend is None:
            raise ExportFileError(f"{path}: unknown model file type (expected .onnx, .xml or .pt)")
    classes = {"onnxruntime": OnnxBackend, "openvino": OpenVinoBackend, "torchscript": TorchScriptBackend}
    if backend not in classes:
        raise ValueError(f"unknown backend {backend!r} (choose from {', '.join(classes)})")
    return classes[backend](path, **options)
