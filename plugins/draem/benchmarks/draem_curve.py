"""DRAEM's AUROC against training effort on one MVTec-like category: one fit, scored at several epochs.

The fit runs through adcore's Engine at the given parameters. After each chosen epoch the
detector (as it is at that moment, learning-rate schedule of the whole budget) is scored on
the test split; scoring time is not counted as training. Each row gives the epochs, steps,
training wall seconds, training CPU seconds (all threads: about twice the wall time of an
idle 2-core machine) and the load average, so numbers measured on a busy machine can be
re-read. The last row is the finished fit (same as ``adcore fit`` at these parameters).

    python plugins/draem/benchmarks/draem_curve.py --data ../shared/datasets/mvtec_ad/bottle \
        --textures ../shared/datasets/dtd_subset --eval-epochs 5,10,20 --param epochs=20 --out curve.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--textures", default="")
    parser.add_argument("--param", action="append", default=[], help="name=value, as adcore fit --param")
    parser.add_argument("--eval-epochs", default="")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from adcore import AnomalyDataset, Engine, create_detector, load_data
    from adcore.metrics import image_auroc, pixel_auroc

    params = dict(p.split("=", 1) for p in args.param)
    if args.textures:
        params["textures"] = args.textures
    detector = create_detector("draem", seed=args.seed, **params)
    splits = load_data(f"mvtec:{args.data}")
    train = AnomalyDataset(splits.train, detector.input_spec, cache=True)
    test = AnomalyDataset(splits.test, detector.input_spec, has_masks=splits.has_masks)
    eval_epochs = {int(e) for e in args.eval_epochs.split(",") if e}
    rows: list[dict] = []
    clock = {"wall": 0.0, "cpu": 0.0, "wall0": time.perf_counter(), "cpu0": time.process_time()}

    def score(tag: str, epoch: int, step: int) -> None:
        clock["wall"] += time.perf_counter() - clock["wall0"]
        clock["cpu"] += time.process_time() - clock["cpu0"]
        was_training = detector.training
        detector.eval()
        scores, labels, maps, masks = [], [], [], []
        with torch.inference_mode():
            for start in range(0, len(test), args.batch_size):
                items = [test[i] for i in range(start, min(len(test), start + args.batch_size))]
                output = detector(torch.stack([item["image"] for item in items]))
                scores.append(output.pred_score)
                maps.append(output.anomaly_map)
                labels += [item["label"] for item in items]
                masks += [item["mask"] for item in items]
        row = {
            "at": tag,
            "epoch": epoch,
            "step": step,
            "train_wall_s": round(clock["wall"], 1),
            "train_cpu_s": round(clock["cpu"], 1),
            "load_1min": round(os.getloadavg()[0], 2),
            "image_auroc": round(image_auroc(torch.cat(scores), torch.tensor(labels)), 4),
            "pixel_auroc": round(pixel_auroc(torch.cat(maps), torch.stack(masks)), 4),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(args.out, "w") as handle:
            json.dump({"params": params, "batch_size": args.batch_size, "rows": rows}, handle, indent=1)
        detector.train(was_training)
        clock["wall0"], clock["cpu0"] = time.perf_counter(), time.process_time()

    def log(line: str) -> None:
        print(line, f"load={os.getloadavg()[0]:.1f}", flush=True)
        match = re.match(r"train epoch (\d+)/\d+: step=(\d+)", line)
        if match and int(match.group(1)) in eval_epochs:
            score("epoch", int(match.group(1)), int(match.group(2)))

    engine = Engine(device="cpu", seed=args.seed, batch_size=args.batch_size, progress=False, log=log)
    report = engine.fit(detector, train, None)
    score("end", len(report["history"]), report["history"][-1]["step"])


if __name__ == "__main__":
    main()
