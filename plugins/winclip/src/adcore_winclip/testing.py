"""A tiny open_clip model for testing WinCLIP's machinery without real CLIP weights.

No CLIP weights exist offline where this plugin was written, so its tests build a tiny
open_clip vision-text model from a model config JSON (ViT: 240 px, 16 px patches, width 64,
2 layers; text: width 64, 2 layers, open_clip's own BPE tokenizer; embedding dimension 32),
save it as an open_clip checkpoint, and load it the way a user loads real weights
(``clip_model=<config .json>``, ``weights=<file>``).

With random weights, the text side means nothing, so zero-shot detection cannot work. For the
tests that need a detector that detects (the conformance kit's white squares), the tiny model
is first *aligned* to one concept: its image projection (and only that) is refitted in closed
form, a ridge linear probe, so that synthetic smooth textures with a saturated white square
embed on the anomalous side of WinCLIP's own prompt ensemble (Eq. 1 with the real prompts,
tokenizer and text encoder) and textures without one on the normal side. It is a test
fixture that has learned one thing, nothing like CLIP; accuracy on real data with it means
nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from adcore_winclip.clip_loading import _architecture
from adcore_winclip.model import class_prototypes

TINY_NAME = "winclip-tiny-test"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 240, "patch_size": 16, "width": 64, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}


@attrs.frozen
class TinyClip:
    config: Path  # the model config JSON: pass as clip_model
    weights: Path  # the open_clip checkpoint: pass as weights

    def params(self, **extra) -> dict:
        return {"clip_model": str(self.config), "weights": str(self.weights), **extra}


def textures(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth random colour textures in [0, 1], (count, 3, size, size), on a horizontal ramp."""
    coarse = 0.35 + 0.25 * torch.rand(count, 3, 8, 8, generator=generator)
    images = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    ramp = torch.linspace(-0.06, 0.06, size).view(1, 1, 1, size)
    return (images + ramp).clamp(0, 1)


def white_squares(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A copy of ``images`` with one saturated white square each (side 10-30 % of the image)."""
    out = images.clone()
    size = images.shape[-1]
    for i in range(len(out)):
        side = int(torch.randint(size // 10, size * 3 // 10, (1,), generator=generator))
        top, left = (int(v) for v in torch.randint(0, size - side, (2,), generator=generator))
        out[i, :, top : top + side, left : left + side] = 1.0
    return out


def _normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def align(model: torch.nn.Module, tokenizer, samples: int = 96, seed: int = 0, ridge: float = 1e-3) -> float:
    """Teach the tiny model one concept by refitting only its image projection (a ridge linear
    probe, closed form): a texture with a white square should embed on the anomalous prototype
    of WinCLIP's prompt ensemble, one without on the normal prototype. Returns the probe's
    training accuracy under Eq. 1."""
    generator = torch.Generator().manual_seed(seed)
    visual = model.visual
    size = visual.image_size[0]
    with torch.no_grad():
        prototypes = class_prototypes(model, tokenizer, "object")  # the text side stays as built
        normal = textures(samples // 2, size, generator)
        anomalous = white_squares(textures(samples // 2, size, generator), generator)
        images = _normalize(torch.cat([normal, anomalous]))
        labels = torch.cat([torch.zeros(samples // 2), torch.ones(samples // 2)]).long()
        width = visual.proj.shape[0]
        visual.proj = torch.nn.Parameter(torch.eye(width))  # encode_image now returns ln_post(class token)
        features = model.encode_image(images)
        targets = prototypes[labels]
        gram = features.T @ features + ridge * len(features) * torch.eye(width)
        visual.proj = torch.nn.Parameter(torch.linalg.solve(gram, features.T @ targets))
        embeddings = F.normalize(model.encode_image(images), dim=-1)
        predicted = (embeddings @ prototypes.T).argmax(dim=1)
    return float((predicted == labels).float().mean())


def write_tiny_clip(folder: Path, aligned: bool = True, seed: int = 0) -> TinyClip:
    """Build the tiny model (seeded), optionally align it, and save config and weights in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = TINY_NAME + ("" if aligned else "-random")
    config = folder / f"{name}.json"
    config.write_text(json.dumps(TINY_CONFIG, indent=1))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model = _architecture(name)  # seeded random weights: this file's whole point
    if aligned:
        align(model, open_clip.get_tokenizer(name), seed=seed)
    weights = folder / f"{name}.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return TinyClip(config, weights)
