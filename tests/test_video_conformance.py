"""The video path for video detectors: a tiny motion detector through the conformance kit's video variant.

``TinyMotion`` is the smallest honest video detector: per pooled cell, the mean absolute
change between a clip's first and last frame, standardised by the training clips' mean and
spread at that cell. It needs clips (a single frame has no motion), so it exercises the
whole video contract: ``clip_length > 1``, ``VideoBatch`` while fitting, clips in ``predict``,
one score, map and region per scored frame.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import pytest
import torch
import torch.nn.functional as F
from adcore import AnomalyDetector, DetectorOutput, InputSpec, VideoBatch, hookimpl
from adcore.data import load_data
from adcore.data.video_dataset import VideoDataset
from adcore.data.video_synthetic import make_video_folder
from adcore.engine import Engine
from adcore_sdk.conformance import VideoDetectorConformance


@attrs.define
class TinyMotionConfig:
    image_size: tuple[int, int] = attrs.field(default=(64, 64), converter=tuple)
    clip_length: int = 3
    frame_stride: int = 1
    pool: int = 4


class TinyMotion(AnomalyDetector):
    name = "tiny-motion"
    Config = TinyMotionConfig

    def __init__(self, config: TinyMotionConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("std", torch.empty(0))
        self._sum = self._squares = None
        self._count = 0

    @property
    def input_spec(self) -> InputSpec:
        cfg = self.config
        return InputSpec(cfg.image_size, clip_length=cfg.clip_length, frame_stride=cfg.frame_stride)

    def check_images(self, clips: torch.Tensor) -> None:
        length = self.config.clip_length
        if clips.ndim != 5 or clips.shape[1] != length or clips.shape[2] != 3:
            raise ValueError(f"{self.name}: expected clips (N, {length}, 3, H, W), got {tuple(clips.shape)}")
        if not torch.isfinite(clips).all():
            raise ValueError(f"{self.name}: clips contain NaN or infinite values")

    def _motion(self, clips: torch.Tensor) -> torch.Tensor:
        change = (clips[:, -1] - clips[:, 0]).abs().mean(dim=1, keepdim=True)
        return F.avg_pool2d(change.float(), self.config.pool)

    def fit_begin(self) -> None:
        self._sum = self._squares = None
        self._count = 0

    def fit_batch(self, batch: VideoBatch) -> None:
        assert isinstance(batch, VideoBatch), "a video detector is fitted on VideoBatch"
        motion = self._motion(batch.frames)
        total, squares = motion.sum(0), motion.square().sum(0)
        self._sum = total if self._sum is None else self._sum + total
        self._squares = squares if self._squares is None else self._squares + squares
        self._count += motion.shape[0]

    def fit_end(self) -> None:
        if not self._count:
            raise ValueError(f"{self.name}: no training clips seen")
        self.mean = self._sum / self._count
        self.std = (self._squares / self._count - self.mean.square()).clamp_min(0).sqrt() + 1e-3

    def forward(self, clips: torch.Tensor) -> DetectorOutput:
        z = ((self._motion(clips) - self.mean) / self.std).clamp_min(0)
        height, width = clips.shape[-2:]
        anomaly_map = F.interpolate(z, size=(height, width), mode="bilinear", align_corners=False)
        pool, cells = self.config.pool, z.flatten(1)
        best, where = cells.max(dim=1)
        y, x = (where // z.shape[-1]).float() * pool, (where % z.shape[-1]).float() * pool
        regions = [torch.stack([x[i], y[i], x[i] + pool, y[i] + pool, best[i]])[None] for i in range(len(best))]
        return DetectorOutput(pred_score=anomaly_map.flatten(1).amax(1), anomaly_map=anomaly_map, regions=regions)


class _Plugin:
    ADCORE_API = ">=2,<3"

    @hookimpl
    def adcore_register_detectors(self, register):
        register(TinyMotion)


plugin = _Plugin()


class TestTinyMotionVideoConformance(VideoDetectorConformance):
    detector_name = "tiny-motion"
    plugin = plugin
    params: ClassVar[dict] = {"image_size": (32, 32)}
    clip_length = 3
    video_frames = 24
    video_size = 48


def test_engine_gives_a_video_detector_clips_and_an_image_detector_frames(tmp_path):
    root = make_video_folder(tmp_path / "videos", n_train=2, n_test=1, frames=12, size=32)
    splits = load_data(f"video:folder:{root}")
    engine = Engine(device="cpu", batch_size=4, progress=False, log=lambda m: None)
    seen = []

    class Recording(TinyMotion):
        def forward(self, clips):
            seen.append(tuple(clips.shape))
            return super().forward(clips)

    detector = Recording(image_size=(32, 32), clip_length=4, frame_stride=2)
    engine.fit(detector, VideoDataset(splits.train, detector.input_spec), None)
    predictions = engine.predict(detector, VideoDataset(splits.test, detector.input_spec))
    assert seen and all(shape[1:] == (4, 3, 32, 32) for shape in seen)
    # Frames 0..5 have no full clip of 4 frames 2 apart: the first scored frame is 6.
    assert [p.rsplit("/", 1)[-1] for p in predictions.paths] == [f"{i:04d}.png" for i in range(6, 12)]


def test_a_video_detector_refuses_an_image_batch_in_the_engine(tmp_path):
    from adcore.data import AnomalyDataset
    from helpers import make_mvtec

    images = load_data(f"mvtec:{make_mvtec(tmp_path / 'category')}")
    detector = TinyMotion()
    engine = Engine(device="cpu", progress=False, log=lambda m: None)
    with pytest.raises(ValueError, match="tiny-motion is a video detector"):
        engine.fit(detector, AnomalyDataset(images.train, detector.input_spec), None)
