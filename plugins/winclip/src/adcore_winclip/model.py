"""WinCLIP and WinCLIP+ (Jeong et al., CVPR 2023), step by step as in the paper.

WinCLIP asks a pretrained CLIP whether an image, and each small region of it, looks more like
a normal or a damaged object. WinCLIP+ adds a few normal reference images.

1. **Compositional prompt ensemble** (Sec. 4.1, :mod:`adcore_winclip.prompts`). Every state
   phrase of a normal object ("flawless bottle", "bottle without defect", ...) is put into
   every template ("a cropped photo of the {}.", ...); the same for the anomalous states
   ("damaged bottle", "bottle with flaw", ...). Each prompt's CLIP text embedding is
   normalised; the normalised average per class gives two prototypes, ``g_n`` and ``g_a``.
2. **Anomaly probability** (Eq. 1). For a visual embedding ``f``, the softmax over the cosine
   similarities with ``(g_n, g_a)`` divided by the temperature ``tau`` gives the probability
   of the anomalous class: ``ascore_0(f)``.
3. **Window embeddings** (Sec. 4.2, Fig. 3). The ViT's patch tokens form an ``h x w`` grid
   (15 x 15 for ViT-B-16-plus-240 at 240 px). A ``k x k`` window (``scales``: small 2 x 2 and
   mid 3 x 3, stride one patch) is encoded by giving the transformer only the class token and
   the window's patch tokens (with their positional embeddings): every other token is masked
   out, so the class token's output is CLIP's embedding of that window alone. The whole image
   (all tokens) gives the image embedding, the coarsest scale.
4. **Zero-shot map** (Sec. 4.2). Each window's ``ascore_0`` is spread over the patches it
   covers by harmonic averaging: a patch gets ``n / sum(1 / s_u)`` over the ``n`` windows
   ``u`` that contain it, so one confidently normal window keeps a patch normal. The maps of
   the window scales and the image scale (a constant map) are averaged; the map is upsampled
   bilinearly to the input size. The zero-shot image score is ``ascore_0`` of the image
   embedding.
5. **WinCLIP+** (Sec. 4.3, ``k_shot`` > 0). A pass over ``k_shot`` normal images stores their
   patch embeddings and window embeddings per scale (the visual memory). A query patch or
   window scores ``min_r (1 - cos(f, r)) / 2`` over the memory of its kind; window scores are
   spread over patches harmonically as in step 4, and the patch, small and mid maps are
   averaged into the few-shot map. The final map averages the zero-shot and few-shot maps;
   the image score averages ``ascore_0`` of the image with the few-shot map's maximum.

CLIP itself is a resource (:mod:`adcore_winclip.clip_loading`), never random weights; a
checkpoint records where it came from and stores only the prototypes and the visual memory.
"""

from __future__ import annotations

from typing import Any

import attrs
import open_clip
import torch
import torch.nn.functional as F
from adcore import (
    AnomalyDetector,
    Batch,
    DetectorOutput,
    InputSpec,
    LearningType,
    Pass,
    TrainingSpec,
    non_negative,
    to_int_tuple,
)
from adcore.components import UpsampleBlurMap, nearest_neighbors
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from adcore_winclip.clip_loading import resolve_clip
from adcore_winclip.prompts import prompt_ensemble

#: tau of Eq. 1: CLIP's temperature (0.07) as used for WinCLIP's softmax over the two classes.
TEMPERATURE = 0.07
#: Largest number of token sequences given to the transformer at once (bounds memory).
WINDOW_CHUNK = 4096


def _scales_valid(instance: Any, attribute: attrs.Attribute, value: tuple[int, ...]) -> None:
    if not value or any(scale < 1 for scale in value) or len(set(value)) != len(value):
        raise ValueError(f"{attribute.name} must be distinct window sizes >= 1 (in patches), got {list(value)}")


@attrs.define
class WinCLIPConfig:
    #: The object's name in the prompts ("bottle", "screw", ...).
    class_name: str = "object"
    #: Normal reference images (WinCLIP+); 0 is zero-shot.
    k_shot: int = attrs.field(default=0, validator=non_negative)
    #: An open_clip model name, or the path of an open_clip model config JSON.
    clip_model: str = "ViT-B-16-plus-240"
    #: "auto" (a resource provider, or open_clip's download when allowed) or an open_clip weights file.
    weights: str = "auto"
    #: Window sides in patches: the paper's small (2) and mid (3) scales.
    scales: tuple[int, ...] = attrs.field(default=(2, 3), converter=to_int_tuple, validator=_scales_valid)


# -- the method's pieces, as functions ---------------------------------------------------------
def window_token_indices(grid: tuple[int, int], size: int) -> torch.Tensor:
    """Patch indices (row-major in the ``grid``) of every ``size x size`` window at stride 1:
    ``(windows, size * size)``, windows in row-major order of their top-left patch."""
    height, width = grid
    if not 1 <= size <= min(height, width):
        raise ValueError(f"a window of {size} x {size} patches does not fit the {height} x {width} patch grid")
    tops = torch.arange(height - size + 1)
    lefts = torch.arange(width - size + 1)
    starts = (tops[:, None] * width + lefts[None, :]).flatten()
    offsets = (torch.arange(size)[:, None] * width + torch.arange(size)[None, :]).flatten()
    return starts[:, None] + offsets[None, :]


def class_prototypes(clip: torch.nn.Module, tokenizer: Any, class_name: str) -> torch.Tensor:
    """``(2, D)``: the normalised mean of the normalised text embeddings of the normal, then
    the anomalous, prompts (the paper's class prototypes ``g_n``, ``g_a``)."""
    prototypes = []
    for prompts in prompt_ensemble(class_name):
        embeddings = F.normalize(clip.encode_text(tokenizer(prompts)).float(), dim=-1)
        prototypes.append(F.normalize(embeddings.mean(dim=0), dim=-1))
    return torch.stack(prototypes)


def anomaly_probability(embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Eq. 1: softmax over (normal, anomalous) of cos(f, g) / tau; the anomalous probability.
    ``embeddings`` (..., D), ``prototypes`` (2, D), both normalised."""
    logits = embeddings @ prototypes.T / TEMPERATURE
    return logits.softmax(dim=-1)[..., 1]


def harmonic_aggregation(window_scores: torch.Tensor, windows: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Spread window scores ``(N, windows)`` over patches: each patch gets the harmonic mean of
    the scores of the windows that contain it, ``(N, num_patches)``."""
    inverse = 1.0 / window_scores.clamp_min(1e-12)
    per_token = inverse.repeat_interleave(windows.shape[1], dim=1)  # one entry per (window, covered patch)
    sums = window_scores.new_zeros(window_scores.shape[0], num_patches).index_add_(1, windows.flatten(), per_token)
    counts = torch.bincount(windows.flatten(), minlength=num_patches).to(window_scores)
    return counts / sums


def association(queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """WinCLIP+'s reference association: ``min_r (1 - cos(q, r)) / 2`` for normalised vectors,
    that is a quarter of the squared distance to the nearest memory item. ``queries`` (..., D)."""
    distances, _ = nearest_neighbors(queries.reshape(-1, queries.shape[-1]), memory, k=1)
    return (distances[:, 0].square() / 4).clamp(0.0, 1.0).reshape(queries.shape[:-1])


class WinCLIP(AnomalyDetector):
    """WinCLIP (zero-shot) and WinCLIP+ (``k_shot`` normal references)."""

    name = "winclip"
    Config = WinCLIPConfig
    # The default configuration's type (the card says so too); k_shot > 0 makes an instance few-shot.
    learning_type = LearningType.ZERO_SHOT

    def __init__(self, config: WinCLIPConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        if cfg.k_shot > 0:
            self.learning_type = LearningType.FEW_SHOT
        clip, model_name, source = resolve_clip(cfg.clip_model, cfg.weights)
        visual = clip.visual
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", None) != "tok":
            raise ValueError(
                f"clip_model {cfg.clip_model}: WinCLIP needs a ViT whose image embedding is its class token"
            )
        self.clip = clip
        self.clip_source = source
        self.clip.weights_source = source  # shown in report.json's weights_sources
        self.grid = tuple(visual.grid_size)
        self.num_patches = self.grid[0] * self.grid[1]
        for scale in cfg.scales:  # fixed by the config: not stored in checkpoints
            self.register_buffer(f"windows_{scale}", window_token_indices(self.grid, scale), persistent=False)
        with torch.no_grad():
            prototypes = class_prototypes(clip, open_clip.get_tokenizer(model_name), cfg.class_name)
        self.register_buffer("text_prototypes", prototypes)
        if cfg.k_shot > 0:  # the visual memory, sized by the references at fit time
            self.register_buffer("reference_patches", torch.empty(0))
            for scale in cfg.scales:
                self.register_buffer(f"reference_windows_{scale}", torch.empty(0))
        self.upsample = UpsampleBlurMap(sigma=0.0)  # bilinear only: the paper does not smooth

    # -- description ----------------------------------------------------------------------------
    @property
    def input_spec(self) -> InputSpec:
        """CLIP's input size and normalisation (open_clip's preprocessing config of the model)."""
        visual = self.clip.visual
        preprocess = getattr(visual, "preprocess_cfg", None) or {}
        mean = tuple(float(v) for v in preprocess.get("mean", OPENAI_DATASET_MEAN))
        std = tuple(float(v) for v in preprocess.get("std", OPENAI_DATASET_STD))
        return InputSpec(tuple(int(v) for v in visual.image_size), mean, std)

    @property
    def training_spec(self) -> TrainingSpec:
        if self.config.k_shot == 0:
            return TrainingSpec.nothing()
        return TrainingSpec((Pass("references", self.fit_batch),), max_images=self.config.k_shot)

    def external_modules(self) -> dict[str, str]:
        return {"clip": self.clip_source}  # recorded in checkpoints, never copied

    def windows(self, scale: int) -> torch.Tensor:
        return getattr(self, f"windows_{scale}")

    # -- step 3: image, patch and window embeddings ------------------------------------------------
    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The ViT's input tokens: class token then patch tokens, with positions, after ln_pre."""
        visual = self.clip.visual
        patches = visual.conv1(images).flatten(2).transpose(1, 2)  # (N, P, width)
        cls = visual.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        tokens = torch.cat([cls, patches], dim=1) + visual.positional_embedding.to(patches.dtype)
        return visual.ln_pre(tokens)

    def _encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Transformer, ln_post and projection of every token: (B, L, width) -> (B, L, D)."""
        visual = self.clip.visual
        outputs = [visual.ln_post(visual.transformer(chunk)) for chunk in tokens.split(WINDOW_CHUNK)]
        return torch.cat(outputs) @ visual.proj

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
        """Normalised float32 embeddings: image (N, D), patches (N, P, D), windows per scale (N, W_s, D)."""
        tokens = self._tokens(images)
        full = self._encode(tokens).float()
        image, patches = F.normalize(full[:, 0], dim=-1), F.normalize(full[:, 1:], dim=-1)
        windows = {}
        for scale in self.config.scales:
            index = self.windows(scale) + 1  # +1: token 0 is the class token
            keep = torch.cat([index.new_zeros(index.shape[0], 1), index], dim=1)  # (W, 1 + k*k)
            sequences = tokens[:, keep]  # (N, W, 1 + k*k, width): only the window's tokens (masking)
            encoded = self._encode(sequences.flatten(0, 1))[:, 0].float()
            windows[scale] = F.normalize(encoded, dim=-1).view(images.shape[0], index.shape[0], -1)
        return image, patches, windows

    # -- step 5: the visual memory of WinCLIP+ --------------------------------------------------------
    def fit_begin(self) -> None:
        self._patches: list[torch.Tensor] = []
        self._windows: dict[int, list[torch.Tensor]] = {scale: [] for scale in self.config.scales}

    def fit_batch(self, batch: Batch) -> None:
        _, patches, windows = self.embed(batch.image)
        self._patches.append(patches.flatten(0, 1))
        for scale, embeddings in windows.items():
            self._windows[scale].append(embeddings.flatten(0, 1))

    def fit_end(self) -> None:
        if self.config.k_shot == 0:
            return
        if not getattr(self, "_patches", None):
            raise ValueError("winclip: no reference images were seen (k_shot > 0 needs normal images to fit on)")
        self.reference_patches = torch.cat(self._patches)
        for scale in self.config.scales:
            setattr(self, f"reference_windows_{scale}", torch.cat(self._windows[scale]))
        del self._patches, self._windows

    # -- steps 2, 4 and 5: scores and maps ----------------------------------------------------------------
    def zero_shot(self, image: torch.Tensor, windows: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(image score (N,), patch map (N, P)) from the prompts alone."""
        prototypes = self.text_prototypes.float()
        image_score = anomaly_probability(image, prototypes)
        maps = [image_score[:, None].expand(-1, self.num_patches)]  # the image scale
        for scale, embeddings in windows.items():
            scores = anomaly_probability(embeddings, prototypes)
            maps.append(harmonic_aggregation(scores, self.windows(scale), self.num_patches))
        return image_score, torch.stack(maps).mean(dim=0)

    def few_shot(self, patches: torch.Tensor, windows: dict[int, torch.Tensor]) -> torch.Tensor:
        """The few-shot patch map (N, P): association with the references, patch and window scales averaged."""
        maps = [association(patches, self.reference_patches)]
        for scale, embeddings in windows.items():
            scores = association(embeddings, getattr(self, f"reference_windows_{scale}"))
            maps.append(harmonic_aggregation(scores, self.windows(scale), self.num_patches))
        return torch.stack(maps).mean(dim=0)

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        image, patches, windows = self.embed(images)
        with torch.autocast(device_type=images.device.type, enabled=False):
            score, patch_map = self.zero_shot(image, windows)
            if self.config.k_shot > 0:
                few = self.few_shot(patches, windows)
                score = (score + few.amax(dim=1)) / 2
                patch_map = (patch_map + few) / 2
            grid_map = patch_map.view(images.shape[0], 1, *self.grid)
            anomaly_map = self.upsample(grid_map, images.shape[-2:])
        return DetectorOutput(pred_score=score, anomaly_map=anomaly_map)
