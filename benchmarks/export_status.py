"""Which installed detectors export, to which format, and how close the file is to PyTorch.

Each detector is built at its defaults (``--image-size`` overrides the size where it has one),
fitted on a tiny synthetic MVTec category (one epoch or a few steps for trained models: the
arithmetic is checked, not accuracy), then exported to ONNX, OpenVINO and TorchScript. Each
cell is the largest difference from eager PyTorch on two random images (relative to the
output's scale for raw outputs), or the one-line reason the export failed.

    python benchmarks/export_status.py                      # every installed detector
    python benchmarks/export_status.py --models padim,cfa --image-size 128
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def fit_tiny(name: str, image_size: int | None, root: Path):
    import attrs
    from adcore.data import AnomalyDataset, load_data
    from adcore.engine import Engine
    from adcore.plugins import create_detector, get_registry

    params = {}
    fields = {f.name for f in attrs.fields(get_registry().detector_class(name).Config)}
    if image_size and "image_size" in fields:
        params["image_size"] = [image_size, image_size]
    detector = create_detector(name, seed=0, params=params)
    splits = load_data(f"mvtec:{root}")
    train = AnomalyDataset(splits.train, detector.input_spec)
    val = AnomalyDataset(splits.test, detector.input_spec, has_masks=True)
    kind = detector.training_spec.kind.value
    budgets = [{"epochs": 1}, {"steps": 2}, {}] if kind == "gradient" else [{}]
    for i, budget in enumerate(budgets):
        try:
            Engine(device="cpu", progress=False, batch_size=4, seed=0, **budget).fit(detector, train, val)
            return detector
        except ValueError as exc:
            if i == len(budgets) - 1 or "has no stage trained for" not in str(exc):
                raise
    return detector


def status(name: str, image_size: int | None, root: Path, folder: Path) -> dict:
    from adcore.export import export_detector

    row: dict = {"detector": name}
    try:
        started = time.perf_counter()
        detector = fit_tiny(name, image_size, root)
        row["fit_s"] = round(time.perf_counter() - started, 1)
    except Exception as exc:  # noqa: BLE001 - reported, the next detector goes on
        row["error"] = f"could not fit: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return row
    onnx_file = None
    for fmt, suffix in (("onnx", ".onnx"), ("openvino", ".xml"), ("torchscript", ".pt")):
        started = time.perf_counter()
        try:
            result = export_detector(
                detector, fmt, folder / f"{name}{suffix}", onnx_file=onnx_file if fmt == "openvino" else None
            )
            if fmt == "onnx":
                onnx_file = result.path
            worst = max(result.check.values()) if result.check else float("nan")
            row[fmt] = f"ok, {worst:.1e}" + ("" if result.metadata["input"]["batch"] == "dynamic" else ", batch 1")
        except Exception as exc:  # noqa: BLE001
            row[fmt] = str(exc).splitlines()[0][:300]
        row[f"{fmt}_s"] = round(time.perf_counter() - started, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated detectors (default: every installed one)")
    parser.add_argument("--image-size", type=int, default=128, help="input size where the detector has one")
    args = parser.parse_args()
    from adcore.data.synthetic import make_mvtec
    from adcore.plugins import get_registry

    names = args.models.split(",") if args.models else sorted(get_registry().detectors)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = make_mvtec(Path(tmp) / "data" / "category", n_train=8, n_good=3, n_bad=3, size=args.image_size)
        for name in names:
            row = status(name, args.image_size, root, Path(tmp))
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    print("| detector | ONNX | OpenVINO | TorchScript |")
    print("|---|---|---|---|")
    for r in rows:
        cells = (
            [r.get("error", "")] * 3 if "error" in r else [r.get(f, "") for f in ("onnx", "openvino", "torchscript")]
        )
        print(f"| {r['detector']} | " + " | ".join(c.replace("|", "/") for c in cells) + " |")


if __name__ == "__main__":
    main()
