"""Train DSR's discrete latent model (a two-codebook VQ-VAE) on natural images, offline, on a CPU.

DSR (Zavrtanik et al., ECCV 2022, Sec. 3.1) pretrains its discrete latent model on ImageNet
and keeps it frozen for every category. Full ImageNet is not available offline, so this
script trains the same model on the 1,000 images of ``imagenet_samples`` (optionally with
texture images added to the training pool):

1. Images are decoded once, resized so that their short side is ``--short-side`` px, and
   kept as uint8. Every 10th file by name is held out (100 of 1,000) and never trained on.
2. Every step draws ``--batch`` random ``--crop`` px crops (random horizontal flip) from the
   training images, all draws from one seeded generator.
3. Loss: ``||I - D(Q(E(I)))||^2 + beta * commitment`` (beta 0.25, the VQ-VAE paper's). The
   codebooks follow the encoders by exponential moving averages, gradients pass the
   quantisation straight through, unused entries restart at random encoder outputs.
   Adam with a linear warm-up and cosine decay; bf16 autocast where the CPU has AMX.
4. Every ``--eval-every`` steps: held-out reconstruction error (MSE and PSNR on the
   centre crops of the 100 held-out images, side ``--eval-crop``) and codebook usage
   (fraction of entries the held-out images use, and perplexity), written to the log and
   to a checkpoint: fp16 safetensors whose metadata holds the whole recipe and the numbers,
   so training can be stopped at any time (``--max-minutes`` bounds the wall time).

Reproduce the shipped file with the command in this plugin's README.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from adcore_dsr.latent import DiscreteLatentModel
from PIL import Image
from safetensors.torch import save_file

SUFFIXES = {".jpg", ".jpeg", ".png"}


def load_folder(folder: Path, short_side: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(train, held out) uint8 images (3, H, W), short side ``short_side``; every 10th file held out."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    train, held = [], []
    for i, path in enumerate(files):
        image = Image.open(path).convert("RGB")
        scale = short_side / min(image.size)
        image = image.resize(
            (max(short_side, round(image.width * scale)), max(short_side, round(image.height * scale))), Image.BILINEAR
        )
        tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
        (held if i % 10 == 9 else train).append(tensor)
    return train, held


def random_crops(images: list[torch.Tensor], count: int, crop: int, generator: torch.Generator) -> torch.Tensor:
    out = []
    for _ in range(count):
        image = images[int(torch.randint(len(images), (1,), generator=generator))]
        top = int(torch.randint(image.shape[1] - crop + 1, (1,), generator=generator))
        left = int(torch.randint(image.shape[2] - crop + 1, (1,), generator=generator))
        patch = image[:, top : top + crop, left : left + crop]
        if torch.rand(1, generator=generator) < 0.5:
            patch = patch.flip(-1)
        out.append(patch)
    return torch.stack(out).float() / 255


def centre_crops(images: list[torch.Tensor], crop: int) -> torch.Tensor:
    out = []
    for image in images:
        top, left = (image.shape[1] - crop) // 2, (image.shape[2] - crop) // 2
        out.append(image[:, top : top + crop, left : left + crop])
    return torch.stack(out).float() / 255


@torch.no_grad()
def evaluate(model: DiscreteLatentModel, held: torch.Tensor) -> dict[str, float]:
    """Held-out reconstruction MSE / PSNR (pixels in [0, 1]) and codebook usage."""
    model.eval()
    errors, ids = [], {"fine": [], "coarse": []}
    for chunk in held.split(20):
        reconstruction, codes = model(chunk)
        errors.append(((reconstruction.clamp(0, 1) - chunk) ** 2).flatten(1).mean(1))
        ids["fine"].append(codes["fine_ids"].flatten())
        ids["coarse"].append(codes["coarse_ids"].flatten())
    model.train()
    mse = torch.cat(errors)
    result = {"held_out_mse": float(mse.mean()), "held_out_psnr": float((-10 * torch.log10(mse)).mean())}
    for level, quantiser in (("fine", model.vq_fine), ("coarse", model.vq_coarse)):
        counts = torch.bincount(torch.cat(ids[level]), minlength=quantiser.codes).float()
        p = counts / counts.sum()
        result[f"{level}_usage"] = float((counts > 0).float().mean())
        result[f"{level}_perplexity"] = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    return result


def save(model: DiscreteLatentModel, path: Path, recipe: dict) -> None:
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"recipe": json.dumps(recipe)})
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=Path("/work/shared/datasets/imagenet_samples"))
    parser.add_argument("--textures", type=Path, default=None, help="optional extra training images (e.g. dtd_subset)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--fine-codes", type=int, default=512)
    parser.add_argument("--coarse-codes", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--short-side", type=int, default=160)
    parser.add_argument("--eval-crop", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--beta", type=float, default=0.25, help="commitment loss weight")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--max-minutes", type=float, default=45.0)
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.time()
    train, held = load_folder(args.images, args.short_side)
    if args.textures is not None:
        extra, _ = load_folder(args.textures, args.short_side)
        train += extra
    held_crops = centre_crops(held, args.eval_crop)
    print(f"{len(train)} training images, {len(held)} held out; loaded in {time.time() - start:.0f} s", flush=True)

    model = DiscreteLatentModel(args.width, args.dim, args.fine_codes, args.coarse_codes)
    for quantiser in (model.vq_fine, model.vq_coarse):
        quantiser.generator = generator
    # Start the codebooks at encoder outputs of real crops rather than at noise.
    with torch.no_grad():
        warm = random_crops(train, 64, args.crop, generator)
        for level, quantiser in (("fine", model.vq_fine), ("coarse", model.vq_coarse)):
            z = _pre_quantised(model, warm, level)
            flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            pick = torch.randint(0, flat.shape[0], (quantiser.codes,), generator=generator)
            quantiser.set_codebook(flat[pick])
    use_bf16 = args.bf16 == "on" or (args.bf16 == "auto" and "amx_bf16" in Path("/proc/cpuinfo").read_text())
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    recipe = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    recipe.update(bf16=use_bf16, train_images=len(train), held_out_images=len(held))
    history = []
    step, running = 0, []
    train_start = time.time()
    while step < args.steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        images = random_crops(train, args.batch, args.crop, generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            reconstruction, codes = model(images)
        loss_rec = F.mse_loss(reconstruction.float(), images)
        loss = loss_rec + args.beta * codes["commitment"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        running.append(float(loss_rec.detach()))
        minutes = (time.time() - train_start) / 60
        last = step == args.steps or minutes >= args.max_minutes
        if step % args.eval_every == 0 or last:
            numbers = evaluate(model, held_crops)
            numbers.update(
                step=step, train_mse=float(np.mean(running)), minutes=round(minutes, 2), load_average=os.getloadavg()[0]
            )
            running = []
            history.append(numbers)
            print(json.dumps(numbers), flush=True)
            recipe.update(
                steps_done=step,
                wall_minutes=round(minutes, 2),
                **{k: numbers[k] for k in numbers if k.startswith(("held", "fine", "coarse"))},
            )
            recipe["history"] = history
            save(model, args.out, recipe)
        if last:
            break
    print(f"done: {step} steps in {(time.time() - train_start) / 60:.1f} min -> {args.out}", flush=True)


def _pre_quantised(model: DiscreteLatentModel, images: torch.Tensor, level: str) -> torch.Tensor:
    """The encoder output just before quantiser ``level`` (for initialising the codebook)."""
    features = model.encode_fine(images - 0.5)
    pre_coarse = model.pre_coarse(model.encode_coarse(features))
    if level == "coarse":
        return pre_coarse
    coarse, _, _ = model.vq_coarse(pre_coarse)
    return model.pre_fine(torch.cat([features, model.coarse_to_fine(coarse)], dim=1))


if __name__ == "__main__":
    main()
