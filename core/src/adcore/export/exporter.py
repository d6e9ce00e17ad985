"""Trace a detector's ``forward`` into ONNX, OpenVINO IR or TorchScript, with its metadata inside.

Generic over :class:`adcore.AnomalyDetector`: nothing here knows a model. A detector whose
``forward`` cannot be traced either says why beforehand with a class attribute
``export_unsupported = "one line"`` or fails here with the tracer's error in one line
(:class:`ExportError`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import attrs
import torch

import adcore
from adcore.backbones.feature_extractor import folded_for_tracing
from adcore.detector import AnomalyDetector
from adcore.export import FORMATS, METADATA_KEY
from adcore.export.graph import ExportGraph

EXPORT_FORMAT_VERSION = 1
SUFFIXES = {"onnx": ".onnx", "openvino": ".xml", "torchscript": ".torchscript.pt"}
TORCHSCRIPT_METADATA_FILE = "adcore.json"
EXAMPLE_BATCH = 2  # traced with 2 (1 would let the tracer fix it), checked with 1 and 3 images
CHECK_BATCH = 3
#: Tolerances the self-check holds the exported file to (fp32): normalised outputs absolutely,
#: raw outputs relative to their own scale.
CHECK_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The detector cannot be exported to this format; the message is one line saying why."""


@attrs.frozen
class ExportResult:
    """What was written: the main file (and companions), its metadata and the self-check."""

    path: Path
    format: str
    files: tuple[Path, ...]
    metadata: dict[str, Any]
    #: output name -> largest difference from eager on the example images (scaled for raw outputs)
    check: dict[str, float] | None = None


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """The root cause's type and first line: exporters wrap the tracer's error in generic ones."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else text
    first = re.sub(r"\s+", " ", f"{type(exc).__name__}: {first}")
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def export_metadata(
    detector: AnomalyDetector, graph: ExportGraph, fmt: str, checkpoint_metadata: dict | None, dynamic_batch: bool
) -> dict[str, Any]:
    """Everything a runtime needs to preprocess, score and decide, as JSON-ready values."""
    spec = detector.input_spec
    checkpoint_metadata = checkpoint_metadata or {}
    post = detector.post_processor.summary()
    return _json_safe(
        {
            "format": "adcore-export",
            "format_version": EXPORT_FORMAT_VERSION,
            "file_format": fmt,
            "adcore_version": adcore.__version__,
            "torch_version": torch.__version__,
            "detector": detector.name,
            "plugin": checkpoint_metadata.get("plugin"),
            "plugin_distribution": checkpoint_metadata.get("plugin_distribution"),
            "plugin_version": checkpoint_metadata.get("plugin_version"),
            "config": detector.config_dict(),
            "input": {
                "name": "image",
                "layout": "NCHW",
                "dtype": "float32",
                "color": "RGB",
                "range": [0.0, 1.0],
                "image_size": list(spec.image_size),
                "mean": list(spec.mean),
                "std": list(spec.std),
                "normalization": "inside the graph: (image - mean) / std",
                "resize": "decode to 8-bit RGB (EXIF orientation applied, alpha over black), "
                "PIL bilinear resize to image_size (width, height), then uint8 / 255",
                "batch": "dynamic" if dynamic_batch else 1,
            },
            "outputs": graph.output_names,
            "post_processing": post,
            "decision": {
                "is_anomalous": "pred_score >= image_threshold",
                "mask": "anomaly_map >= pixel_threshold",
            },
            "precision": "fp32",
        }
    )


# -- formats ----------------------------------------------------------------------------------
def _quiet():
    """Exporters print progress and warnings; keep the user's terminal for the result."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def _translations() -> dict:
    """ONNX translations of aten ops that torch.onnx lacks (generic ops, no model knows of them)."""
    from onnxscript import opset18 as op

    def sort_stable(self, stable=None, dim: int = -1, descending: bool = False):
        # ONNX TopK breaks ties by the lower index, so a full-length TopK is a stable sort.
        end = dim + 1 if dim != -1 else None
        length = op.Shape(self, start=dim, end=end) if end is not None else op.Shape(self, start=dim)
        return op.TopK(self, length, axis=dim, largest=1 if descending else 0, sorted=1)

    return {torch.ops.aten.sort.stable: sort_stable}


def _onnx_program(graph: ExportGraph, example: torch.Tensor, dynamic_batch: bool):
    batch = torch.export.Dim("batch", min=1, max=4096) if dynamic_batch else None
    with _quiet():
        return torch.onnx.export(
            graph,
            (example,),
            input_names=["image"],
            output_names=graph.output_names,
            dynamo=True,
            dynamic_shapes=({0: batch},) if dynamic_batch else None,
            external_data=False,
            optimize=True,
            custom_translation_table=_translations(),
        )


def _write_onnx(graph: ExportGraph, example: torch.Tensor, path: Path, metadata_fn, dynamic: bool) -> bool:
    """Write ``path``; returns whether its input really has a free batch dimension."""
    import onnx

    program = _onnx_program(graph, example, dynamic)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        with _quiet():
            program.save(str(raw), external_data=False)
        model = onnx.load(str(raw))
    # The exporter may specialise a batch size it was asked to keep free: trust the graph.
    dynamic = dynamic and not model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata_fn(dynamic))})
    model.producer_name, model.producer_version = "adcore", adcore.__version__
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return dynamic


def _write_openvino(
    graph: ExportGraph, example: torch.Tensor, path: Path, metadata_fn, dynamic: bool, onnx_file: Path | None = None
) -> bool:
    """OpenVINO IR (.xml + .bin), converted from the ONNX graph (``onnx_file`` if given), weights in fp32."""
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        if onnx_file is None:
            onnx_file = Path(tmp) / "model.onnx"
            dynamic = _write_onnx(graph, example, onnx_file, metadata_fn, dynamic)
        else:
            dynamic = read_export_metadata(onnx_file)["input"]["batch"] == "dynamic"
        with _quiet():
            model = ov.convert_model(str(onnx_file))
    model.set_rt_info(json.dumps(metadata_fn(dynamic)), [METADATA_KEY])
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(path), compress_to_fp16=False)
    return dynamic


def _write_torchscript(graph: ExportGraph, example: torch.Tensor, path: Path, metadata_fn, dynamic: bool) -> bool:
    """A trace; whether it really takes any batch size is checked by running it (see export_detector)."""
    with _quiet(), torch.no_grad():  # torch.jit is deprecated (FutureWarning) but is what TorchScript is
        traced = torch.jit.trace(graph, (example,), check_trace=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_METADATA_FILE: json.dumps(metadata_fn(dynamic))})
    return dynamic


# -- reading back -------------------------------------------------------------------------------
def read_export_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``adcore`` metadata stored inside an exported file (any of the three formats)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        text = props.get(METADATA_KEY)
    elif path.suffix == ".xml":
        import openvino as ov

        model = ov.Core().read_model(str(path))
        text = model.get_rt_info([METADATA_KEY]).astype(str) if model.has_rt_info([METADATA_KEY]) else None
    else:
        files = {TORCHSCRIPT_METADATA_FILE: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the TorchScript loader
            torch.jit.load(str(path), map_location="cpu", _extra_files=files)
        text = files[TORCHSCRIPT_METADATA_FILE] or None
    if not text:
        raise ExportError(f"{path}: no adcore metadata inside (not written by adcore export)")
    if isinstance(text, bytes):
        text = text.decode()
    return json.loads(text)


def _run_exported(path: Path, fmt: str, images: torch.Tensor, names: list[str]) -> dict[str, Any] | None:
    """Outputs of the written file on ``images`` with the format's own runtime (None if not installed)."""
    array = images.numpy()
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return dict(zip(names, session.run(names, {"image": array}), strict=True))
    if fmt == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        result = compiled(array)
        return {name: result[compiled.output(name)] for name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return {name: value.numpy() for name, value in zip(names, module(images), strict=True)}


def _differences(eager: dict[str, torch.Tensor], exported: dict[str, Any]) -> dict[str, float]:
    """Largest difference per output: absolute for normalised ones, relative to scale for raw ones."""
    result = {}
    for name, reference in eager.items():
        got = torch.as_tensor(exported[name]).float().reshape(reference.shape)
        diff = float((got - reference).abs().max())
        if not name.startswith("normalized"):
            diff /= max(1.0, float(reference.abs().max()))
        result[name] = diff
    return result


# -- entry points -------------------------------------------------------------------------------
def default_output(checkpoint: str | os.PathLike, fmt: str) -> Path:
    checkpoint = Path(checkpoint)
    stem = checkpoint.name.removesuffix(".safetensors")
    return checkpoint.with_name(stem + SUFFIXES[fmt])


def export_detector(
    detector: AnomalyDetector,
    fmt: str,
    output: str | os.PathLike,
    *,
    checkpoint_metadata: dict | None = None,
    example: torch.Tensor | None = None,
    check: bool = True,
    onnx_file: str | os.PathLike | None = None,
) -> ExportResult:
    """Export a fitted detector; ``example`` is RGB 0..1 at the input size (random if omitted).

    With ``check`` the written file is run on the example images with its own runtime and
    compared with eager PyTorch (:attr:`ExportResult.check`). ``onnx_file``: for OpenVINO,
    convert this earlier ONNX export of the same detector instead of tracing again.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")
    reason = getattr(detector, "export_unsupported", None)
    if reason:
        raise ExportError(f"detector '{detector.name}' cannot be exported: {reason}")
    detector.check_fitted()
    detector = detector.cpu().eval()
    height, width = detector.input_spec.image_size
    if example is None:
        generator = torch.Generator().manual_seed(0)
        example = torch.rand(CHECK_BATCH, 3, height, width, generator=generator)
    example = example.float().cpu()
    if tuple(example.shape[1:]) != (3, height, width):
        raise ValueError(f"example images must be (N, 3, {height}, {width}), got {tuple(example.shape)}")
    if example.shape[0] < CHECK_BATCH:
        example = example.repeat(CHECK_BATCH, 1, 1, 1)[:CHECK_BATCH]
    output = Path(output)
    graph = ExportGraph(detector).eval()
    try:
        names = graph.probe(example)
        with torch.no_grad():
            eager = dict(zip(names, graph(example), strict=True))
    except Exception as exc:  # noqa: BLE001 - plugin code: any error, in one line
        raise ExportError(f"detector '{detector.name}' fails on the example images: {_one_line(exc)}") from None
    reused_onnx = None if onnx_file is None else Path(onnx_file)

    def write(dynamic: bool) -> bool:
        def metadata_fn(free: bool) -> dict[str, Any]:
            return export_metadata(detector, graph, fmt, checkpoint_metadata, free)

        trace_input = example[:EXAMPLE_BATCH] if dynamic else example[:1]
        if fmt == "onnx":
            return _write_onnx(graph, trace_input, output, metadata_fn, dynamic)
        if fmt == "openvino":
            return _write_openvino(graph, trace_input, output, metadata_fn, dynamic, reused_onnx)
        return _write_torchscript(graph, trace_input, output, metadata_fn, dynamic)

    def verify(dynamic: bool) -> dict[str, float] | None:
        """Differences from eager on 1 image and (with a free batch) on all the example images."""
        differences = None
        for images in (example[:1], example) if dynamic else (example[:1],):
            exported = _run_exported(output, fmt, images, names)
            if exported is None:  # the format's runtime is not installed
                return None
            found = _differences({k: v[: images.shape[0]] for k, v in eager.items()}, exported)
            differences = {k: max(v, (differences or {}).get(k, 0.0)) for k, v in found.items()}
        return differences

    # First a free batch size; a graph that turns out to fix it (the tracer baked it in, or its
    # outputs go wrong at another batch size) is exported again for one image at a time.
    failure: BaseException | None = None
    for wanted in (True, False):
        try:
            with folded_for_tracing(graph, example):  # the graph computes what eager PyTorch computed
                dynamic = write(wanted)
        except ImportError as exc:
            raise ImportError(f"export to {fmt} needs {exc.name or exc}: pip install 'adcore[export]'") from None
        except Exception as exc:  # noqa: BLE001 - a tracer's error about the model's forward
            failure = exc
            continue
        if wanted and not dynamic and reused_onnx is None:  # the exporter fixed the traced batch size
            failure = ExportError("the exported graph fixed the batch size")
            continue
        if not check:
            break
        try:
            differences = verify(dynamic)
        except Exception as exc:  # noqa: BLE001 - the written graph fails to run at some batch size
            failure = exc
            continue
        if dynamic and differences is not None and max(differences.values()) > CHECK_TOLERANCE:
            failure = ExportError(
                f"outputs differ from PyTorch by {max(differences.values()):.2g} at another batch size"
            )
            continue
        break
    else:
        output.unlink(missing_ok=True)  # no half-usable file is left behind
        if fmt == "openvino":
            output.with_suffix(".bin").unlink(missing_ok=True)
        raise ExportError(f"detector '{detector.name}' cannot be exported to {fmt}: {_one_line(failure)}") from None
    files = (output, output.with_suffix(".bin")) if fmt == "openvino" else (output,)
    metadata = export_metadata(detector, graph, fmt, checkpoint_metadata, dynamic)
    return ExportResult(path=output, format=fmt, files=files, metadata=metadata, check=differences if check else None)


def export_checkpoint(
    checkpoint: str | os.PathLike, fmt: str, output: str | os.PathLike | None = None, *, check: bool = True
) -> ExportResult:
    """Load a checkpoint (``model.safetensors``) and export it; default output beside it."""
    from adcore.checkpoint import load_checkpoint

    detector, metadata = load_checkpoint(checkpoint)
    return export_detector(
        detector,
        fmt,
        output if output is not None else default_output(checkpoint, fmt),
        checkpoint_metadata=metadata,
        check=check,
    )
