"""Binned pixel metrics (what spilled predictions get) against the exact ones, on real maps.

Loads a fitted checkpoint, scores its test data once in memory, then computes the exact
pixel AUROC / AUPRO / F1-max (one sort) and the binned ones at several bin counts, and the
same metrics through a store spilled to disk (``spill_bytes=0``). Prints the differences next
to the bounds the histograms give, and the time of each.

    .venv/bin/python benchmarks/bench_binned_metrics.py RUN/model.safetensors [--data mvtec:PATH]
"""

from __future__ import annotations

import argparse
import json
import time

KEYS = ("pixel_auroc", "pixel_aupro", "pixel_f1_max")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data", help="default: the data the checkpoint was fitted on")
    parser.add_argument("--bins", type=int, nargs="+", default=[1 << 12, 1 << 16, 1 << 20])
    args = parser.parse_args()

    from adcore.checkpoint import load_checkpoint
    from adcore.data import AnomalyDataset, load_data
    from adcore.engine import Engine
    from adcore.metrics import binned_pixel_metrics, pixel_metrics

    detector, metadata = load_checkpoint(args.checkpoint)
    data = args.data or metadata["run"]["data"]
    splits = load_data(data)
    test = AnomalyDataset(splits.test, detector.input_spec, has_masks=splits.has_masks)
    engine = Engine(device="cpu", progress=False, log=lambda message: None)
    predictions = engine.predict(detector, test, spill_bytes=1 << 40)  # in memory, for the exact sort
    started = time.perf_counter()
    exact = pixel_metrics(predictions.maps, predictions.masks)
    rows = [{"path": "exact", "seconds": round(time.perf_counter() - started, 2), **exact}]
    for bins in args.bins:
        started = time.perf_counter()
        binned = binned_pixel_metrics(predictions.maps, predictions.masks, bins=bins)
        row = {"path": f"binned {bins}", "seconds": round(time.perf_counter() - started, 2)}
        for key in KEYS:
            row[key] = binned[key]
            row[f"{key}_difference"] = binned[key] - exact[key]
            row[f"{key}_error_bound"] = binned[f"{key}_error_bound"]
        rows.append(row)
    spilled = engine.predict(detector, test, spill_bytes=0)
    started = time.perf_counter()
    metrics = engine.evaluate(detector, spilled)
    row = {"path": "spilled store, engine.evaluate", "seconds": round(time.perf_counter() - started, 2)}
    row.update({key: metrics[key] for key in KEYS})
    row.update({f"{key}_difference": metrics[key] - exact[key] for key in KEYS})
    row.update({f"{key}_error_bound": metrics[f"{key}_error_bound"] for key in KEYS})
    rows.append(row)

    header = {
        "data": splits.name,
        "images": len(predictions.paths),
        "maps": list(predictions.maps.shape),
        "pixels": int(predictions.maps.numel()),
    }
    print(json.dumps(header))
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
