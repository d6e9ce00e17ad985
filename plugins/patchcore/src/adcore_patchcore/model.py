"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

1. Locally aware patch features: feature maps of mid-level backbone stages, each averaged
   over a ``patch_size`` x ``patch_size`` neighbourhood (stride 1), resized to the finest
   of their grids (bilinear) and concatenated: one feature vector per patch position.
2. Memory bank: the patch features of all training images.
3. Coreset subsampling: k-center-greedy selection of ``coreset_sampling_ratio`` of the
   bank, with distances measured on a sparse random projection to ``projection_dim``
   dimensions; the selected (unprojected) features form the memory bank. The random start
   point and projection follow the run's seed (the Engine seeds torch before fitting).
   Selection runs in shards of ``coreset_shard_size`` rows (time linear in the bank) and,
   beyond ``coreset_block_size`` rows, block by block while the images arrive (memory flat
   in the number of images).
4. Patch scores: Euclidean distance of each test patch to its nearest memory item (exact,
   chunked search). Anomaly map: patch scores upsampled to the image, Gaussian blur
   (sigma ``blur_sigma``).
5. Image score: the largest patch score s*, re-weighted by how isolated its nearest memory
   item m* is (paper eq. 7): ``s = (1 - softmax(d(m_test*, N_b(m*)))[m*]) * s*``, where
   N_b(m*) are the ``num_neighbors`` bank items nearest to m* (m* included).
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from adcore import (
    AnomalyDetector,
    Batch,
    DetectorOutput,
    create_feature_extractor,
    distinct_levels,
    gather_rows,
    non_negative,
    one_of,
    positive,
    to_int_tuple,
    to_size,
    unit_interval,
)
from adcore.components import (
    ApproximateNearestNeighbors,
    KCenterGreedy,
    StreamingCoreset,
    UpsampleBlurMap,
    nearest_neighbors,
)


def _odd(instance, attribute, value) -> None:
    if value < 1 or value % 2 == 0:
        raise ValueError(f"{attribute.name} must be a positive odd number (a centred window), got {value}")


@attrs.define
class PatchcoreConfig:
    backbone: str = "tf_efficientnet_lite0"
    # Mid-level stages of lite0: stride 8 (40 ch) and 16 (112 ch), like WideResNet's layer2/3.
    layers: tuple[int, ...] = attrs.field(default=(2, 3), converter=to_int_tuple, validator=distinct_levels)
    image_size: tuple[int, int] = attrs.field(default=(256, 256), converter=to_size)
    coreset_sampling_ratio: float = attrs.field(default=0.1, converter=float, validator=[positive, unit_interval])
    num_neighbors: int = attrs.field(default=9, converter=int, validator=positive)
    patch_size: int = attrs.field(default=3, converter=int, validator=_odd)  # neighbourhood of the local averaging
    projection_dim: int = attrs.field(default=128, converter=int, validator=positive)  # coreset distances
    # Rows per shard of the coreset search (time linear in the bank); 0: the exact greedy rule,
    # fast only when the patches form well-separated clusters.
    coreset_shard_size: int = attrs.field(default=16384, converter=int, validator=non_negative)
    # Rows buffered before a block gets its coreset (memory: one block plus the coreset, whatever
    # the number of images); 0: all rows in one block. 2^20 rows (600 MB) hold every shared category.
    coreset_block_size: int = attrs.field(default=1_048_576, converter=int, validator=non_negative)
    blur_sigma: float = attrs.field(default=4.0, converter=float, validator=non_negative)
    # "exact": chunked exact search; "faiss": an IVF index proposes candidates, re-ranked exactly
    # (for banks of millions of patches; pip install faiss-cpu).
    search: str = attrs.field(default="exact", validator=one_of("exact", "faiss"))
    search_probes: int = attrs.field(default=8, converter=int, validator=positive)  # faiss cells visited per query
    # Largest query/bank block of the nearest-neighbour search (None: ~16 MB blocks).
    search_chunk_size: int | None = attrs.field(default=None, validator=attrs.validators.optional(positive))
    weights: str = "auto"


class Patchcore(AnomalyDetector):
    name = "patchcore"
    Config = PatchcoreConfig

    def __init__(self, config: PatchcoreConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        self.feature_extractor = create_feature_extractor(cfg.backbone, cfg.layers, weights=cfg.weights)
        self.coreset = self._new_coreset()
        self.anomaly_map = UpsampleBlurMap(cfg.blur_sigma)
        # Sized at fit time; load_fitted_state lets it take the checkpoint's shape.
        self.register_buffer("memory_bank", torch.empty(0, sum(self.feature_extractor.channels)))
        self._index: tuple[tuple, ApproximateNearestNeighbors] | None = None

    # -- 1. locally aware patch features ---------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features (N, D, h, w) on the finest grid of the chosen stages."""
        k = self.config.patch_size
        features = [F.avg_pool2d(f.float(), k, stride=1, padding=k // 2) for f in self.feature_extractor(images)]
        size = max((f.shape[-2:] for f in features), key=lambda s: s[0] * s[1])
        features = [
            f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            for f in features
        ]
        return torch.cat(features, dim=1)

    @staticmethod
    def _rows(embedding: torch.Tensor) -> torch.Tensor:
        """(N, D, h, w) -> (N * h * w, D), one row per patch."""
        return embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1])

    # -- 2. + 3. memory bank and coreset -------------------------------------------------------
    def _new_coreset(self) -> StreamingCoreset:
        """The coreset, selected block by block; its start points and projection follow the run's seed."""
        cfg = self.config
        sampler = KCenterGreedy(
            cfg.coreset_sampling_ratio,
            cfg.projection_dim,
            seed=torch.initial_seed(),
            shard_size=cfg.coreset_shard_size or None,
        )
        return StreamingCoreset(sampler, block_rows=cfg.coreset_block_size or None)

    # Several processes (adcore fit --nproc N) each embed a shard; the rows are gathered in order.
    supports_sharded_fit = True

    def fit_begin(self) -> None:
        self.coreset = self._new_coreset()  # the Engine seeds torch with the run's seed before fitting

    def combine_shards(self) -> None:
        self.coreset.gather(gather_rows)

    def fit_batch(self, batch: Batch) -> None:
        self.coreset.add(self._rows(self.embed(batch.image)))

    def fit_end(self) -> None:
        if self.coreset.empty:
            raise ValueError("patchcore: fit_end called without any training batch")
        self.memory_bank = self.coreset.finish()

    # -- 4. + 5. scoring ---------------------------------------------------------------------------
    def nearest_in_bank(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance to and index of each patch's nearest memory item (exact distances either way)."""
        bank = self.memory_bank
        if self.config.search == "exact":
            return nearest_neighbors(patches, bank, k=1, chunk_size=self.config.search_chunk_size)
        key = (bank.data_ptr(), tuple(bank.shape), bank.device)
        if self._index is None or self._index[0] != key:  # built once per bank (after fit or load)
            self._index = (key, ApproximateNearestNeighbors(bank, num_probes=self.config.search_probes))
        return self._index[1].search(patches, k=1)

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        embedding = self.embed(images)
        n, _, h, w = embedding.shape
        patches = self._rows(embedding)
        bank = self.memory_bank
        distances, nearest = self.nearest_in_bank(patches)
        patch_scores = distances.view(n, h * w)
        nearest = nearest.view(n, h * w)

        # Image score: the most anomalous patch, re-weighted by its nearest item's neighbourhood.
        score, location = patch_scores.max(dim=1)
        test_patch = patches.view(n, h * w, -1)[torch.arange(n, device=patches.device), location]  # m_test*
        memory_item = nearest.gather(1, location.unsqueeze(1)).squeeze(1)  # m*
        b = min(self.config.num_neighbors, bank.shape[0])
        _, support = nearest_neighbors(bank[memory_item], bank, k=b, chunk_size=self.config.search_chunk_size)
        support_distances = torch.linalg.vector_norm(test_patch.unsqueeze(1) - bank[support], dim=2)  # (n, b)
        weight = 1.0 - torch.softmax(support_distances, dim=1)[:, 0]
        pred_score = weight * score

        anomaly_map = self.anomaly_map(patch_scores.view(n, 1, h, w), images.shape[-2:])
        return DetectorOutput(pred_score=pred_score, anomaly_map=anomaly_map)
