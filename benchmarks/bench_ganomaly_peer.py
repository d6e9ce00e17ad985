"""GANomaly side by side: adcore's plugin and anomalib's ``Ganomaly``, same data, size and epochs.

Each framework runs in its own process (and its own virtual environment: anomalib's is
``--peer-python``, by default /work/peer-venv/bin/python, see the plugin's README for how it
was installed). Both train with their own defaults (architecture, losses, optimizers, batch
size: anomalib 32, adcore's Engine 16) except the image size and the number of epochs, which
are the same for both. Neither uses pretrained weights. Prints one JSON row per framework and a
table: image AUROC, fit seconds, test images/s.

For anomalib, ``image_auroc`` is what its Engine reports. Its Ganomaly min-max normalises test
scores batch by batch with the running min/max (not one monotonic map over the whole test
set), so ``image_auroc_raw`` also gives the AUROC of its raw latent distances, re-scored on the
test set after the fit.

    python benchmarks/bench_ganomaly_peer.py --data /work/shared/datasets/mvtec_ad/bottle
    python benchmarks/bench_ganomaly_peer.py --data ... --image-size 64 --epochs 15
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_PEER_PYTHON = os.environ.get("ADCORE_PEER_PYTHON", "/work/peer-venv/bin/python")


def run_adcore(data: Path, image_size: int, epochs: int, seed: int) -> dict:
    import torch
    from adcore import AnomalyDataset, Engine, create_detector, load_data

    detector = create_detector("ganomaly", seed=seed, image_size=image_size, epochs=epochs)
    splits = load_data(f"mvtec:{data}")
    train = AnomalyDataset(splits.train, detector.input_spec, cache=True)
    test = AnomalyDataset(splits.test, detector.input_spec, has_masks=splits.has_masks)
    engine = Engine(device="cpu", seed=seed, progress=False, log=lambda m: None)
    started = time.perf_counter()
    report = engine.fit(detector, train, None)
    fit_seconds = time.perf_counter() - started
    metrics, _ = engine.test(detector, test)
    return {
        "framework": "adcore",
        "image_auroc": metrics["image_auroc"],
        "fit_s": fit_seconds,
        "test_img_s": metrics["test_images_per_second"],
        "epochs": len(report["history"]),
        "batch_size": engine.batch_size,
        "image_size": image_size,
        "discriminator_resets": detector.discriminator_resets,
        "threads": torch.get_num_threads(),
    }


def run_anomalib(data: Path, image_size: int, epochs: int, seed: int) -> dict:
    import torch
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from anomalib.models import Ganomaly
    from lightning.pytorch import seed_everything
    from torchmetrics.classification import BinaryAUROC

    seed_everything(seed, workers=True)
    # Its defaults, except the image size (its default pre-processor at another size).
    model = Ganomaly(pre_processor=Ganomaly.configure_pre_processor(image_size=(image_size, image_size)))
    datamodule = MVTecAD(root=data.parent, category=data.name, num_workers=0, seed=seed)
    with tempfile.TemporaryDirectory() as root:
        engine = Engine(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            default_root_dir=root,
            enable_progress_bar=False,
        )
        started = time.perf_counter()
        engine.fit(model=model, datamodule=datamodule)
        fit_seconds = time.perf_counter() - started
        started = time.perf_counter()
        results = engine.test(model=model, datamodule=datamodule, ckpt_path=None, verbose=False)
        test_seconds = time.perf_counter() - started
    # The raw latent distances of the final model on the same test images.
    model.eval()
    scores, labels = [], []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            scores.append(model.model(model.pre_processor(batch.image)).pred_score.flatten())
            labels.append(batch.gt_label.flatten())
    scores, labels = torch.cat(scores), torch.cat(labels)
    raw = BinaryAUROC()(scores, labels.int()).item()
    return {
        "framework": "anomalib",
        "image_auroc": results[0]["image_AUROC"],
        "image_auroc_raw": raw,
        "fit_s": fit_seconds,
        "test_img_s": len(scores) / test_seconds,
        "epochs": epochs,
        "batch_size": datamodule.train_batch_size,
        "image_size": image_size,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="an MVTec AD category folder")
    parser.add_argument("--image-size", type=int, default=32, help="the same for both (adcore's default: 32)")
    parser.add_argument("--epochs", type=int, default=15, help="the same for both (adcore's default: 15)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON, help="python of the venv with anomalib")
    parser.add_argument("--frameworks", default="anomalib,adcore")
    parser.add_argument("--one", choices=("adcore", "anomalib"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run = run_adcore if args.one == "adcore" else run_anomalib
        print(json.dumps(run(args.data.resolve(), args.image_size, args.epochs, args.seed)))
        return

    rows = []
    for framework in args.frameworks.split(","):
        python = args.peer_python if framework == "anomalib" else sys.executable
        command = [
            python, __file__, "--one", framework, "--data", str(args.data),
            "--image-size", str(args.image_size), "--epochs", str(args.epochs), "--seed", str(args.seed),
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            print(f"{framework} failed:\n{result.stderr[-4000:]}", file=sys.stderr)
            continue
        row = json.loads(result.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"data {args.data}, {args.image_size}px, {args.epochs} epochs, seed {args.seed}, load {os.getloadavg()}")
    print(f"{'framework':<10}{'img AUROC':>10}{'raw AUROC':>10}{'fit s':>9}{'test img/s':>11}{'batch':>6}")
    for r in rows:
        raw = r.get("image_auroc_raw")
        print(
            f"{r['framework']:<10}{r['image_auroc']:>10.4f}{'-' if raw is None else format(raw, '.4f'):>10}"
            f"{r['fit_s']:>9.1f}{r['test_img_s']:>11.1f}{r['batch_size']:>6}"
        )


if __name__ == "__main__":
    main()
