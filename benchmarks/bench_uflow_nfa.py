"""U-Flow's unsupervised (a-contrario) threshold on one MVTec category, beside its AUROCs.

For each variant: fit, then the usual metrics, and what the NFA decision (-log10 NFA > 0,
no anomalous data, no tuned threshold) gets right: the share of test images classified
correctly, the share of normal and of anomalous images flagged, and the pixel IoU of the
NFA mask with the ground truth.

    python benchmarks/bench_uflow_nfa.py --data ../shared/datasets/mvtec_ad/bottle
"""

from __future__ import annotations

import argparse

import torch
from adcore.data import AnomalyDataset, load_data
from adcore.engine import Engine
from adcore.plugins import create_detector

#: name -> U-Flow parameters. "without-standardization": the reference's feature
#: normalisation, scales and learning rate (what adcore shipped before the standardisation).
VARIANTS = {
    "default": {},
    "without-standardization": {"standardize": False, "layers": (2, 3, 4), "learning_rate": 1e-3, "epochs": 10},
}


def nfa_decisions(detector, dataset: AnomalyDataset, batch_size: int) -> dict[str, float]:
    flagged, labels, intersection, union = [], [], 0, 0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            nfa = detector.eval().nfa_map(torch.stack([item["image"] for item in items]))
            detected = nfa > 0
            truth = torch.stack([item["mask"] for item in items]) > 0.5
            intersection += (detected & truth).sum().item()
            union += (detected | truth).sum().item()
            flagged += detected.flatten(1).any(dim=1).tolist()
            labels += [item["label"] for item in items]
    flagged, labels = torch.tensor(flagged), torch.tensor(labels)
    return {
        "nfa_share_right": (flagged == labels.bool()).float().mean().item(),
        "normal_flagged": flagged[labels == 0].float().mean().item(),
        "anomalous_flagged": flagged[labels == 1].float().mean().item(),
        "nfa_pixel_iou": intersection / max(union, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="an MVTec AD category folder")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    splits = load_data(f"mvtec:{args.data}")
    print(
        f"{'variant':<26}{'img AUROC':>10}{'pix AUROC':>10}{'AUPRO':>8}{'fit s':>7}{'NFA right':>10}"
        f"{'normal flagged':>15}{'anomalous flagged':>18}{'NFA IoU':>8}"
    )
    for name in args.variants.split(","):
        detector = create_detector("uflow", seed=0, **VARIANTS[name])
        train = AnomalyDataset(splits.train, detector.input_spec, cache=True)
        test = AnomalyDataset(splits.test, detector.input_spec, has_masks=True)
        engine = Engine(progress=False, batch_size=args.batch_size, log=lambda message: None)
        report = engine.fit(detector, train, None)
        metrics, _ = engine.test(detector, test)
        nfa = nfa_decisions(detector, test, args.batch_size)
        print(
            f"{name:<26}{metrics['image_auroc']:>10.4f}{metrics['pixel_auroc']:>10.4f}{metrics['pixel_aupro']:>8.3f}"
            f"{report['fit_seconds']:>7.1f}{nfa['nfa_share_right']:>10.3f}{nfa['normal_flagged']:>15.0%}"
            f"{nfa['anomalous_flagged']:>18.0%}{nfa['nfa_pixel_iou']:>8.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
