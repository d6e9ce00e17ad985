"""The conformance kit: what every adcore detector must do, as pytest tests.

A plugin's test module subclasses :class:`DetectorConformance` and names its detector::

    from adcore_sdk.conformance import DetectorConformance

    class TestMyDetector(DetectorConformance):
        detector = "my-detector"
        params = {"image_size": 64}   # a small, fast configuration

pytest then runs every check below against it, on a tiny synthetic dataset the kit
writes (the ``adcore_conformance_data`` fixture of the kit's pytest plugin, registered
through the ``pytest11`` entry point). The checks:

1. discoverable: an installed plugin registers the name through the ``adcore`` entry points;
2. it fits on the tiny dataset and says it is fitted;
3. ``forward`` returns the documented shapes, dtypes and finite values, and the
   loop's post-processing maps them into [0, 1];
4. the same seed gives the same scores (model construction and fitting);
5. a safetensors checkpoint round trip gives identical scores and maps;
6. images with an obvious defect (a white square) score above normal images;
7. bad input gets a clear error: a wrong channel count, NaNs, an empty training set;
   an unfitted detector refuses to score;
8. its card (what ``list-plugins`` shows, what checkpoints store) matches the class;
9. with ``draws_at_random = True`` (a random channel subset, coreset start, initialisation),
   another seed gives another fitted detector: the seed really reaches what is random.

Zero-shot detectors (``TrainingSpec.nothing()``) run the same checks, except that they
score without any fit and an empty training set is no error; few-shot ones fit on the
``max_images`` their spec asks for.

Class attributes tune the run (smaller images, fewer epochs); they cannot turn a check off.

Video detectors (``InputSpec.clip_length > 1``) subclass :class:`VideoDetectorConformance`
instead: the same checks on tiny generated videos (clips in, one prediction per scored frame),
plus the clip contract and a one-line refusal of image data.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from adcore.checkpoint import load_checkpoint, save_checkpoint
from adcore.data import AnomalyDataset, load_data
from adcore.detector import AnomalyDetector, NotFittedError
from adcore.engine import Engine, Predictions
from adcore.metrics import image_auroc
from adcore.plugins import PluginRegistry, create_detector, set_registry
from adcore.threads import torch_threads
from adcore.training import TrainingKind


class DetectorConformance:
    """Subclass with ``detector = "<registered name>"``; every ``test_*`` here then runs on it."""

    #: The registered detector name.
    detector: ClassVar[str] = ""
    #: Config overrides for a small, fast run (e.g. ``{"image_size": 64}``).
    params: ClassVar[dict[str, Any]] = {}
    #: Epochs for gradient-trained detectors (None: the detector's default).
    epochs: ClassVar[int | None] = None
    #: A pluggy plugin object to register directly instead of discovering installed ones
    #: (for testing a detector before it is packaged; the discovery check then uses it).
    plugin: ClassVar[Any] = None
    # Fits run on one thread (adcore.threads): the data is tiny, and a fixed thread count keeps
    # float reductions in one order, so "same seed, same scores" compares like with like.
    #: The lowest image AUROC that counts as "defects score above normal images".
    min_defect_auroc: ClassVar[float] = 0.9
    batch_size: ClassVar[int] = 4
    #: The method draws at random: check 9 then requires seeds 0 and 1 to fit different detectors.
    draws_at_random: ClassVar[bool] = False

    # -- fixtures ---------------------------------------------------------------------------
    @pytest.fixture(scope="class")
    @classmethod
    def conformance_registry(cls) -> PluginRegistry:
        if not cls.detector:
            pytest.fail(f"{cls.__name__}: set the class attribute `detector` to the registered name")
        registry = PluginRegistry()  # installed plugins, including weight providers
        if cls.plugin is not None:
            info = registry.add_plugin(cls.plugin, name=f"{cls.detector}-under-test", version="0")
            assert info.error is None, f"registering {cls.detector}: {info.error}"
        set_registry(registry)  # checkpoints record the plugin that registered the detector
        yield registry
        set_registry(None)

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_splits(cls, adcore_conformance_data: Path, conformance_registry):
        return load_data(f"mvtec:{adcore_conformance_data}")

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls, conformance_registry, conformance_splits):
        """(detector, engine, test predictions) after one seeded fit."""
        with torch_threads(1):
            detector, engine = cls.build(conformance_registry), cls.engine()
            engine.fit(detector, cls.dataset(detector, conformance_splits.train), None)
            return detector, engine, engine.predict(detector, cls.dataset(detector, conformance_splits.test))

    # -- helpers ------------------------------------------------------------------------------
    @classmethod
    def build(cls, registry: PluginRegistry, seed: int = 0) -> AnomalyDetector:
        return create_detector(cls.detector, seed=seed, registry=registry, **cls.params)

    @classmethod
    def engine(cls, seed: int = 0) -> Engine:
        return Engine(
            device="cpu", seed=seed, batch_size=cls.batch_size, progress=False, epochs=cls.epochs, log=lambda m: None
        )

    @staticmethod
    def dataset(detector: AnomalyDetector, records) -> AnomalyDataset:
        return AnomalyDataset(records, detector.input_spec, has_masks=any(r.mask_path for r in records))

    def fit_and_predict(self, registry, splits, seed: int = 0) -> Predictions:
        return self.fit(registry, splits, seed)[1]

    def fit(self, registry, splits, seed: int = 0) -> tuple[AnomalyDetector, Predictions]:
        with torch_threads(1):
            detector, engine = self.build(registry, seed), self.engine(seed)
            engine.fit(detector, self.dataset(detector, splits.train), None)
            return detector, engine.predict(detector, self.dataset(detector, splits.test))

    # -- 1. discovery ---------------------------------------------------------------------------
    def test_is_discoverable(self, conformance_registry):
        broken = {name: info.error for name, info in conformance_registry.plugins.items() if info.error}
        assert self.detector in conformance_registry.detectors, (
            f"no plugin registers a detector named {self.detector!r}; registered: "
            f"{sorted(conformance_registry.detectors)}; broken plugins: {broken}"
        )
        plugin = conformance_registry.plugin_of(self.detector)
        assert plugin is not None and plugin.error is None, f"plugin of {self.detector!r} failed: {plugin}"
        assert conformance_registry.detector_class(self.detector).name == self.detector

    # -- 2. fitting -------------------------------------------------------------------------------
    def test_fits_on_a_tiny_dataset(self, fitted):
        detector, _, predictions = fitted
        assert bool(detector.is_fitted)
        assert len(predictions.scores) == len(predictions.paths) > 0

    # -- 3. outputs -------------------------------------------------------------------------------
    def test_outputs_have_documented_shapes_dtypes_and_ranges(self, fitted):
        detector, engine, predictions = fitted
        height, width = detector.input_spec.image_size
        images = torch.rand(3, 3, height, width)
        with torch.inference_mode():
            output = detector.eval().predict(images)
        assert output.pred_score.shape == (3,), f"pred_score must be (N,), got {tuple(output.pred_score.shape)}"
        assert output.pred_score.dtype.is_floating_point, (
            f"pred_score must be floating point, got {output.pred_score.dtype}"
        )
        assert torch.isfinite(output.pred_score).all(), "pred_score has NaN or infinite values"
        if output.anomaly_map is not None:
            shape = tuple(output.anomaly_map.shape)
            assert shape == (3, 1, height, width), f"anomaly_map must be (N, 1, H, W) at the input size, got {shape}"
            assert output.anomaly_map.dtype.is_floating_point
            assert torch.isfinite(output.anomaly_map).all(), "anomaly_map has NaN or infinite values"
        # The loop's post-processing turns raw outputs into [0, 1] with the threshold at 0.5.
        engine.calibrate(detector, predictions)
        scores = detector.post_processor.normalize_scores(predictions.scores)
        assert scores.min() >= 0 and scores.max() <= 1
        if predictions.maps is not None:
            maps = detector.post_processor.normalize_maps(predictions.maps)
            assert maps.min() >= 0 and maps.max() <= 1

    # -- 4. reproducibility ---------------------------------------------------------------------
    def test_same_seed_gives_same_scores(self, conformance_registry, conformance_splits, fitted):
        again = self.fit_and_predict(conformance_registry, conformance_splits, seed=0)
        first = fitted[2]
        assert torch.equal(first.scores, again.scores), (
            f"two fits with seed 0 disagree: max score difference {(first.scores - again.scores).abs().max():.3g}"
        )
        if first.maps is not None:
            assert torch.equal(first.maps, again.maps), "two fits with seed 0 give different anomaly maps"

    # -- 5. checkpoints ---------------------------------------------------------------------------
    def test_checkpoint_round_trip_gives_identical_scores(
        self, fitted, conformance_registry, conformance_splits, tmp_path
    ):
        detector, engine, predictions = fitted
        path = save_checkpoint(detector, tmp_path / "model.safetensors")
        restored, metadata = load_checkpoint(path, registry=conformance_registry)
        assert metadata["detector"] == self.detector
        with torch_threads(1):
            again = engine.predict(restored, self.dataset(restored, conformance_splits.test))
        assert torch.equal(predictions.scores, again.scores), (
            f"scores change after a checkpoint round trip (max difference "
            f"{(predictions.scores - again.scores).abs().max():.3g}): is all learned state in parameters or buffers?"
        )
        if predictions.maps is not None:
            assert torch.equal(predictions.maps, again.maps), "anomaly maps change after a checkpoint round trip"

    # -- 6. it detects -------------------------------------------------------------------------------
    def test_obvious_defects_score_above_normal_images(self, fitted):
        predictions = fitted[2]
        auroc = image_auroc(predictions.scores, predictions.labels)
        normal, defective = predictions.scores[predictions.labels == 0], predictions.scores[predictions.labels == 1]
        assert auroc >= self.min_defect_auroc, (
            f"images with a white square should score above normal ones: image AUROC {auroc:.3f} < "
            f"{self.min_defect_auroc} (normal {normal.tolist()}, defective {defective.tolist()})"
        )
        assert defective.mean() > normal.mean()

    # -- 7. bad input -------------------------------------------------------------------------------
    @pytest.mark.parametrize("channels", [1, 4])
    def test_rejects_a_wrong_channel_count(self, fitted, channels):
        detector = fitted[0]
        height, width = detector.input_spec.image_size
        with pytest.raises(ValueError, match=r"\S"), torch.inference_mode():
            detector.eval().predict(torch.rand(2, channels, height, width))

    def test_rejects_nan_input(self, fitted):
        detector = fitted[0]
        images = torch.rand(2, 3, *detector.input_spec.image_size)
        images[1, 0, 3, 3] = float("nan")
        with pytest.raises(ValueError, match=r"(?i)nan|finite"), torch.inference_mode():
            detector.eval().predict(images)

    def test_rejects_an_empty_training_set(self, conformance_registry):
        detector = self.build(conformance_registry)
        if detector.training_spec.kind == TrainingKind.NONE:
            self.engine().fit(detector, [], None)  # zero-shot: nothing to fit, and no error
            assert bool(detector.is_fitted)
            return
        with pytest.raises(ValueError, match="empty"):
            self.engine().fit(detector, [], None)
        if detector.training_spec.kind == TrainingKind.FIT_ONCE:
            # Called directly, without any batch, fitting must fail loudly too, not leave
            # a detector that scores with statistics of nothing.
            detector.fit_begin()
            with pytest.raises((ValueError, RuntimeError), match=r"\S"):
                detector.fit_end()

    def test_unfitted_detector_refuses_to_score(self, conformance_registry):
        detector = self.build(conformance_registry)
        images = torch.rand(1, 3, *detector.input_spec.image_size)
        if detector.training_spec.kind == TrainingKind.NONE:
            with torch.inference_mode():  # zero-shot: scores straight away
                assert detector.eval().predict(images).pred_score.shape == (1,)
            return
        with pytest.raises(NotFittedError), torch.inference_mode():
            detector.eval().predict(images)

    # -- 8. the card ------------------------------------------------------------------------------
    def test_card_describes_the_detector(self, conformance_registry):
        card = conformance_registry.card(self.detector)
        detector = self.build(conformance_registry)
        assert card.name == detector.name
        assert card.learning_type == detector.learning_type.value, (
            f"card says learning_type {card.learning_type!r}, the class {detector.learning_type.value!r}"
        )
        assert card.training_kind == detector.training_spec.kind.value, (
            f"card says training_kind {card.training_kind!r}, the training spec {detector.training_spec.kind.value!r}"
        )

    # -- 9. the seed reaches what is random ---------------------------------------------------------
    def test_another_seed_changes_what_is_random(self, conformance_registry, conformance_splits, fitted):
        if not self.draws_at_random:
            pytest.skip("the detector declares no random draws (draws_at_random = False)")
        first = fitted[0].state_dict()
        other = self.fit(conformance_registry, conformance_splits, seed=1)[0].state_dict()
        learned = [key for key in first if not key.startswith("post_processor.")]  # thresholds: calibration's
        changed = [key for key in learned if not torch.equal(first[key], other[key])]
        assert changed, "seeds 0 and 1 fit identical detectors: the run's seed does not reach the random draws"


class VideoDetectorConformance(DetectorConformance):
    """The kit for video detectors: subclass with ``detector`` (or ``detector_name``) and tiny ``params``.

    The data is a tiny generated video set in the plain folder layout
    (:func:`adcore.data.video_synthetic.make_video_folder`): three training videos of gliding
    grey squares; two test videos where, for a quarter of each, a white square crosses the
    frame fast (new in appearance and in speed), frame labels and masks included. Scoring
    goes through :class:`adcore.data.video_dataset.VideoDataset`, so the detector receives
    :class:`adcore.VideoBatch` when fitting and clips ``(N, T, 3, H, W)`` in ``predict``.

    Reused from the image kit: discovery, fitting, same seed -> same scores, the checkpoint
    round trip, obvious anomalies score higher, the empty training set, the card, the seed
    reaching random draws. Changed for clips: output shapes, bad input (a wrong channel
    count, NaN, a 4-D image batch), the unfitted detector. Added: the clip contract, one
    prediction per scored frame, and image data refused in one line.
    """

    #: Alias of ``detector`` (either may be set).
    detector_name: ClassVar[str] = ""
    #: The clip length the detector declares with ``params`` (None: anything above 1).
    clip_length: ClassVar[int | None] = None
    #: Frames per generated video, and the side of its (square) frames.
    video_frames: ClassVar[int] = 40
    video_size: ClassVar[int] = 64
    min_defect_auroc: ClassVar[float] = 0.8

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.detector_name and not cls.detector:
            cls.detector = cls.detector_name

    # -- fixtures ---------------------------------------------------------------------------
    @pytest.fixture(scope="class")
    @classmethod
    def conformance_video_data(cls, tmp_path_factory) -> Path:
        from adcore.data.video_synthetic import make_video_folder

        root = tmp_path_factory.mktemp("adcore-video-conformance") / "videos"
        return make_video_folder(root, n_train=3, n_test=2, frames=cls.video_frames, size=cls.video_size)

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_splits(cls, conformance_video_data: Path, conformance_registry):
        return load_data(f"video:folder:{conformance_video_data}")

    @staticmethod
    def dataset(detector: AnomalyDetector, records):
        from adcore.data.video_dataset import VideoDataset

        return VideoDataset(records, detector.input_spec, has_masks=any(r.mask is not None for r in records))

    def clips(self, detector: AnomalyDetector, count: int = 3, channels: int = 3) -> torch.Tensor:
        spec = detector.input_spec
        return torch.rand(count, spec.clip_length, channels, *spec.image_size)

    # -- the clip contract ------------------------------------------------------------------------
    def test_declares_clips(self, conformance_registry):
        spec = self.build(conformance_registry).input_spec
        assert spec.clip_length > 1, (
            f"{self.detector}: a video detector declares InputSpec.clip_length > 1, got {spec.clip_length}"
        )
        assert spec.frame_stride >= 1, f"{self.detector}: frame_stride must be at least 1, got {spec.frame_stride}"
        if self.clip_length is not None:
            assert spec.clip_length == self.clip_length, (
                f"{self.detector}: clip_length {spec.clip_length}, the test expects {self.clip_length}"
            )

    def test_scores_each_scored_frame_once(self, fitted, conformance_splits):
        detector, _, predictions = fitted
        spec = detector.input_spec
        first = (spec.clip_length - 1) * spec.frame_stride
        expected = [r.path for r in conformance_splits.test if r.frame_index >= first]
        assert predictions.paths == expected, "one prediction per scored frame, in the dataset's order"
        assert len(predictions.scores) == len(expected)

    def test_refuses_image_data(self, conformance_registry, adcore_conformance_data, tmp_path):
        from adcore.run import fit_run

        detector = self.build(conformance_registry)
        with pytest.raises(ValueError, match=re.escape(self.detector)) as error:
            fit_run(detector, f"mvtec:{adcore_conformance_data}", tmp_path / "run", self.engine(), say=lambda m: None)
        assert "\n" not in str(error.value), "the refusal is one line"
        images = load_data(f"mvtec:{adcore_conformance_data}")
        with pytest.raises(ValueError, match=re.escape(self.detector)):
            self.engine().fit(detector, AnomalyDataset(images.train, detector.input_spec), None)

    # -- outputs for clips --------------------------------------------------------------------------
    def test_outputs_have_documented_shapes_dtypes_and_ranges(self, fitted):
        detector, engine, predictions = fitted
        height, width = detector.input_spec.image_size
        with torch.inference_mode():
            output = detector.eval().predict(self.clips(detector))
        assert output.pred_score.shape == (3,), (
            f"pred_score must be (N,) per clip, got {tuple(output.pred_score.shape)}"
        )
        assert output.pred_score.dtype.is_floating_point
        assert torch.isfinite(output.pred_score).all(), "pred_score has NaN or infinite values"
        if output.anomaly_map is not None:
            shape = tuple(output.anomaly_map.shape)
            assert shape == (3, 1, height, width), f"anomaly_map must be (N, 1, H, W) for the scored frame, got {shape}"
            assert torch.isfinite(output.anomaly_map).all(), "anomaly_map has NaN or infinite values"
        if output.regions is not None:
            assert len(output.regions) == 3, f"regions: one (K, 5) tensor per clip, got {len(output.regions)}"
            for boxes in output.regions:
                assert boxes.ndim == 2 and boxes.shape[1] == 5, f"regions must be (K, 5), got {tuple(boxes.shape)}"
                assert torch.isfinite(boxes).all()
        engine.calibrate(detector, predictions)
        scores = detector.post_processor.normalize_scores(predictions.scores)
        assert scores.min() >= 0 and scores.max() <= 1
        if predictions.maps is not None:
            maps = detector.post_processor.normalize_maps(predictions.maps)
            assert maps.min() >= 0 and maps.max() <= 1

    # -- bad input for clips ---------------------------------------------------------------------------
    @pytest.mark.parametrize("channels", [1, 4])
    def test_rejects_a_wrong_channel_count(self, fitted, channels):
        detector = fitted[0]
        with pytest.raises(ValueError, match=r"\S"), torch.inference_mode():
            detector.eval().predict(self.clips(detector, 2, channels))

    def test_rejects_nan_input(self, fitted):
        detector = fitted[0]
        clips = self.clips(detector, 2)
        clips[1, -1, 0, 3, 3] = float("nan")
        with pytest.raises(ValueError, match=r"(?i)nan|finite"), torch.inference_mode():
            detector.eval().predict(clips)

    def test_rejects_an_image_batch(self, fitted):
        detector = fitted[0]
        with pytest.raises(ValueError, match=r"\S"), torch.inference_mode():
            detector.eval().predict(torch.rand(2, 3, *detector.input_spec.image_size))

    def test_unfitted_detector_refuses_to_score(self, conformance_registry):
        detector = self.build(conformance_registry)
        clips = self.clips(detector, 1)
        if detector.training_spec.kind == TrainingKind.NONE:
            with torch.inference_mode():
                assert detector.eval().predict(clips).pred_score.shape == (1,)
            return
        with pytest.raises(NotFittedError), torch.inference_mode():
            detector.eval().predict(clips)
