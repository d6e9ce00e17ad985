"""Distil an EfficientAD teacher PDN from an ImageNet backbone, offline, on a CPU.

EfficientAD (Batzner et al., WACV 2024, Sec. 3.1) pretrains its patch description
network (PDN) by regressing, for every 33x33 patch, the features a large ImageNet
network gives that patch: WideResNet-101 layer2+layer3 (PatchCore features, stride 8
on images twice the PDN's resolution, 3x3 local aggregation), projected to 384 channels.
That network and full ImageNet are not available here, so this script distils from
the best offline ImageNet backbone (EfficientNet-Lite, through adcore's
``create_feature_extractor``) on the 1,000 ImageNet images of ``imagenet_samples``:

1. Every step takes random crops of side ``2*crop`` from the images (random scale
   and horizontal flip). The backbone sees the crop at full resolution, the PDN sees it
   halved to ``crop`` pixels -- the paper's "extractor at twice the PDN's resolution", so
   the backbone's stride-8 level is stride 4 in the PDN's pixels, the PDN's own stride.
2. Target: the backbone's stride-8 and stride-16 levels, each averaged over 3x3
   neighbours (local aggregation), sampled bilinearly at the exact centres of the PDN's
   output patches (pixel 16 + 4i of the PDN input), concatenated, standardised per
   channel (mean/std of 64 crops drawn before training), then mapped to 384 channels by
   a fixed random matrix with orthonormal columns. That map is an isometry: distances
   between targets are those between the standardised backbone features, so nothing
   is invented or lost, and the PDN keeps the paper's 384 channels (a teacher distilled
   elsewhere, e.g. from WideResNet-101, drops into the detector unchanged).
3. Loss: mean squared error. Adam (weight decay 1e-5), linear warm-up then cosine
   decay; bf16 autocast and channels_last (AMX on recent Xeons).
4. Every ``--eval-every`` steps: per-channel Pearson r between PDN and target on the
   held-out images (every 10th file by name, 100 of 1,000), and a checkpoint (fp16
   safetensors with the whole recipe in its metadata), so it can be stopped at any time.

Reproduce the shipped teachers with the commands in this plugin's README.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from adcore import create_feature_extractor
from adcore_efficientad.pdn import patch_centres, pdn, pdn_output_size
from PIL import Image
from safetensors.torch import save_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_images(folder: Path) -> tuple[list[torch.Tensor], list[torch.Tensor], list[str]]:
    """All images as uint8 (3, H, W); every 10th file by name is held out."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    train, held = [], []
    for i, path in enumerate(files):
        arr = np.asarray(Image.open(path).convert("RGB"))
        (held if i % 10 == 9 else train).append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
    return train, held, [p.name for i, p in enumerate(files) if i % 10 == 9]


def random_crops(images, n: int, side: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random crops, float in [0, 1], (n, 3, side, side): random scale 0.6-1.0 of the short side, random flip."""
    out = []
    for _ in range(n):
        img = images[int(torch.randint(len(images), (1,), generator=gen))]
        h, w = img.shape[1:]
        short = min(h, w)
        scale = 0.6 + 0.4 * float(torch.rand((), generator=gen))
        c = max(16, min(short, round(short * scale)))
        y = int(torch.randint(h - c + 1, (1,), generator=gen))
        x = int(torch.randint(w - c + 1, (1,), generator=gen))
        crop = img[:, y : y + c, x : x + c].float().unsqueeze(0) / 255
        crop = F.interpolate(crop, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        if float(torch.rand((), generator=gen)) < 0.5:
            crop = crop.flip(-1)
        out.append(crop)
    return torch.cat(out)


def centre_crops(images, side: int) -> torch.Tensor:
    """The centred square of each image (short side), resized to ``side``."""
    out = []
    for img in images:
        h, w = img.shape[1:]
        c = min(h, w)
        y, x = (h - c) // 2, (w - c) // 2
        crop = img[:, y : y + c, x : x + c].float().unsqueeze(0) / 255
        out.append(F.interpolate(crop, size=(side, side), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(out)


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


class Target:
    """Backbone features aggregated 3x3 and sampled at the PDN's patch centres."""

    def __init__(self, backbone: str, levels: tuple[int, ...], crop: int):
        self.extractor = create_feature_extractor(backbone, levels, weights="auto").eval()
        self.mean, self.std = self.extractor.mean, self.extractor.std
        self.strides = self.extractor.strides
        self.dim = sum(self.extractor.channels)
        self.n_out = pdn_output_size(crop)
        # PDN patch centre k (in crop pixels) is pixel 2k + 0.5 of the double-size image; a
        # stride-s feature cell j there is centred on s*j + (s-1)/2.
        centres = 2 * patch_centres(self.n_out) + 0.5
        self.cell_coords = [(centres - (s - 1) / 2) / s for s in self.strides]

    @torch.no_grad()
    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        """Target (N, D, n_out, n_out) for crops in [0, 1] at twice the PDN's side."""
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats = self.extractor(normalise(crops, self.mean, self.std))
        out = []
        for f, coords in zip(feats, self.cell_coords, strict=True):
            f = F.avg_pool2d(f.float(), 3, stride=1, padding=1, count_include_pad=False)
            h, w = f.shape[-2:]
            gy = (coords / (h - 1)) * 2 - 1
            gx = (coords / (w - 1)) * 2 - 1
            grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)
            grid = grid.unsqueeze(0).expand(f.shape[0], -1, -1, -1)
            out.append(F.grid_sample(f, grid, mode="bilinear", padding_mode="border", align_corners=True))
        return torch.cat(out, dim=1)

    def projected(self, train_images, seed: int):
        """The 384-channel target: standardised per channel with statistics of 64 crops drawn
        with ``seed + 1``, then mapped by a fixed matrix with orthonormal columns (``seed + 2``).
        Distances are those of the standardised backbone features (an isometry)."""
        side = 2 * (4 * self.n_out + 32)  # twice the PDN input side
        stats = self(random_crops(train_images, 64, side, torch.Generator().manual_seed(seed + 1)))
        mean = stats.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
        std = stats.std(dim=(0, 2, 3)).view(1, -1, 1, 1)
        q, _ = torch.linalg.qr(torch.randn(384, self.dim, generator=torch.Generator().manual_seed(seed + 2)))
        proj = q.contiguous()  # (384, D), orthonormal columns

        def make_target(crops):
            return torch.einsum("kd,ndhw->nkhw", proj, (self(crops) - mean) / std)

        return make_target


def pearson_per_channel(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pearson r of each channel over all images and positions."""
    p = pred.transpose(0, 1).reshape(pred.shape[1], -1).double()
    t = target.transpose(0, 1).reshape(target.shape[1], -1).double()
    p, t = p - p.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    return (p * t).sum(1) / (p.norm(dim=1) * t.norm(dim=1) + 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=["small", "medium"], required=True)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--levels", default="2,3")
    ap.add_argument("--crop", type=int, default=128, help="PDN input side; the backbone sees twice this")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--learning-rate", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--out", type=Path, required=True, help="safetensors file to write (and rewrite at checkpoints)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    levels = tuple(int(v) for v in args.levels.split(","))
    train, held, _ = load_images(args.images)
    target = Target(args.backbone, levels, args.crop)
    make_target = target.projected(train, args.seed)

    held_big = centre_crops(held, 2 * args.crop)
    held_small = normalise(
        F.interpolate(held_big, scale_factor=0.5, mode="bilinear", antialias=True), IMAGENET_MEAN, IMAGENET_STD
    )
    held_target = make_target(held_big)

    net = pdn(args.size).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)

    def lr_at(step):
        if step < args.warmup:
            return args.learning_rate * (step + 1) / args.warmup
        frac = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.learning_rate * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))

    log_path = args.out.with_suffix(".log.jsonl")
    log_path.unlink(missing_ok=True)
    recipe = {
        "size": args.size, "backbone": args.backbone, "levels": list(levels), "target_dim": target.dim,
        "projection": "fixed random orthonormal columns (QR of N(0,1), seed+2), 384 x target_dim",
        "aggregation": "3x3 average, sampled at PDN patch centres", "crop": args.crop,
        "backbone_input": 2 * args.crop, "batch": args.batch, "steps": args.steps,
        "learning_rate": args.learning_rate, "warmup": args.warmup, "weight_decay": args.weight_decay,
        "seed": args.seed, "precision": "bf16 autocast, fp32 master weights; saved fp16",
        "images": str(args.images), "train_images": len(train), "held_out_images": len(held),
        "held_out_rule": "every 10th file by sorted name (index % 10 == 9)",
        "input_normalisation": "ImageNet mean/std",
    }  # fmt: skip

    def evaluate():
        net.eval()
        with torch.no_grad():
            preds = []
            for i in range(0, len(held_small), 20):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    preds.append(net(held_small[i : i + 20].contiguous(memory_format=torch.channels_last)).float())
            pred = torch.cat(preds)
        net.train()
        r = pearson_per_channel(pred, held_target)
        r2 = 1 - ((pred - held_target) ** 2).mean() / held_target.var(dim=(0, 2, 3)).mean()
        return float(r.mean()), float(r2)

    def save(step, elapsed, metrics):
        meta = {
            **recipe,
            "steps_done": step,
            "seconds": round(elapsed),
            "held_out_pearson_r": metrics[0],
            "held_out_r2": metrics[1],
        }
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in net.state_dict().items()}
        tmp = args.out.with_suffix(".tmp")
        save_file(state, str(tmp), metadata={"recipe": json.dumps(meta)})
        tmp.replace(args.out)

    start = time.time()
    running = None
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        big = random_crops(train, args.batch, 2 * args.crop, gen)
        small = normalise(
            F.interpolate(big, scale_factor=0.5, mode="bilinear", antialias=True), IMAGENET_MEAN, IMAGENET_STD
        )
        tgt = make_target(big)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = net(small.contiguous(memory_format=torch.channels_last))
        loss = F.mse_loss(pred.float(), tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lv = float(loss.detach())
        running = lv if running is None else 0.98 * running + 0.02 * lv
        done = step + 1
        if done % args.eval_every == 0 or done == args.steps or done == 20:
            metrics = evaluate()
            elapsed = time.time() - start
            entry = {"step": done, "seconds": round(elapsed, 1), "loss": round(running, 4), "lr": lr_at(step),
                     "held_out_pearson_r": round(metrics[0], 4), "held_out_r2": round(metrics[1], 4)}  # fmt: skip
            print(json.dumps(entry), flush=True)
            with log_path.open("a") as fh:
                fh.write(json.dumps(entry) + "\n")
            save(done, elapsed, metrics)


if __name__ == "__main__":
    main()
