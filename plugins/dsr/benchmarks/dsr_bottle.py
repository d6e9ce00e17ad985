"""Fit DSR on one MVTec AD category and print one JSON row (AUROCs, fit time, load average).

    python plugins/dsr/benchmarks/dsr_bottle.py --data /work/shared/datasets/mvtec_ad/bottle \
        --param epochs=8 --param upsampling_epochs=2

The latent model is the packaged ``dsr:vq_latent`` unless ``--param latent_weights=FILE``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from adcore.data import AnomalyDataset, load_data
from adcore.engine import Engine
from adcore.plugins import create_detector


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--param", action="append", default=[], help="NAME=VALUE (a DsrConfig field)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    params = dict(p.split("=", 1) for p in args.param)
    for key in ("epochs", "upsampling_epochs", "anomaly_width", "restriction_width", "upsampling_width"):
        if key in params:
            params[key] = int(params[key])
    if "learning_rate" in params:
        params["learning_rate"] = float(params["learning_rate"])
    detector = create_detector("dsr", seed=args.seed, **params)
    splits = load_data(f"mvtec:{args.data}")
    train = AnomalyDataset(splits.train, detector.input_spec, cache=True)
    test = AnomalyDataset(splits.test, detector.input_spec, has_masks=True)
    engine = Engine(
        progress=False,
        batch_size=args.batch_size,
        precision=args.precision,
        seed=args.seed,
        log=lambda m: print(m, flush=True),
    )
    load_start = os.getloadavg()[0]
    started = time.time()
    report = engine.fit(detector, train, None)
    fit_s = time.time() - started
    metrics, _ = engine.test(detector, test)
    print(
        json.dumps(
            {
                "params": params,
                "batch_size": args.batch_size,
                "precision": args.precision,
                "image_auroc": metrics.get("image_auroc"),
                "pixel_auroc": metrics.get("pixel_auroc"),
                "pixel_aupro": metrics.get("pixel_aupro"),
                "fit_s": round(fit_s, 1),
                "engine_fit_s": report["fit_seconds"],
                "load_start": load_start,
                "load_end": os.getloadavg()[0],
                "latent": detector.latent_source,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
