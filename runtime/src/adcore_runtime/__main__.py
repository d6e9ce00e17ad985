"""``python -m adcore_runtime MODEL IMAGE_OR_DIR ...``: score images, one line (or JSON row) each."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adcore_runtime.images import ImageError
from adcore_runtime.model import load

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def _images(inputs: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
        else:
            paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adcore-runtime", description="Score images with an adcore export.")
    parser.add_argument("model", help="exported model (.onnx, OpenVINO .xml)")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    parser.add_argument("--backend", choices=("onnxruntime", "openvino", "torchscript"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    try:
        model = load(args.model, args.backend)
        predictions = model.predict_batch(_images(args.inputs), batch_size=args.batch_size)
    except (OSError, ValueError, ImportError, ImageError) as exc:
        print(f"adcore-runtime: error: {exc}", file=sys.stderr)
        return 2
    for p in predictions:
        if args.json:
            row = {"path": p.path, "score": p.score}
            if p.normalized_score is not None:
                row.update(normalized_score=p.normalized_score, is_anomalous=p.is_anomalous)
            print(json.dumps(row))
        else:
            verdict = "" if p.is_anomalous is None else ("  ANOMALOUS" if p.is_anomalous else "  normal")
            norm = "" if p.normalized_score is None else f" (normalised {p.normalized_score:.4f})"
            print(f"{p.path}: score {p.score:.6g}{norm}{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
