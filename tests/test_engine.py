"""The loop: seeded reproducibility, NaN detection, calibration, clear input errors."""

import copy
import math

import pytest
import torch
from adcore.data import AnomalyDataset, ImageRecord, load_data
from adcore.detector import NotFittedError
from adcore.engine import Engine, TrainingDivergedError
from adcore.training import TrainingSpec
from tiny_detectors import TinyGrad, TinyMean


@pytest.fixture
def data(shared_mvtec):
    return load_data(f"mvtec:{shared_mvtec}")


def _datasets(detector, splits):
    return (
        AnomalyDataset(splits.train, detector.input_spec),
        AnomalyDataset(splits.test, detector.input_spec, has_masks=True),
    )


def _engine(**kwargs):
    return Engine(device="cpu", progress=False, batch_size=4, log=lambda message: None, **kwargs)


def test_same_seed_same_scores_for_a_gradient_detector(data):
    torch.manual_seed(123)
    template = TinyGrad()
    train, test = _datasets(template, data)

    def fit_and_score(seed):
        detector = copy.deepcopy(template)  # identical initial weights
        torch.rand(1000)  # disturb the global RNG: the engine must seed it
        engine = _engine(seed=seed)
        engine.fit(detector, train)
        return engine.predict(detector, test)

    first, again, other = fit_and_score(0), fit_and_score(0), fit_and_score(1)
    assert torch.equal(first.scores, again.scores)
    assert torch.equal(first.maps, again.maps)
    # The seed matters (noise and data order), so the equality above is not vacuous.
    assert not torch.equal(first.scores, other.scores)


def test_gradient_fit_runs_the_requested_epochs_and_learns(data):
    torch.manual_seed(0)
    detector = TinyGrad(learning_rate=0.2)
    train, _ = _datasets(detector, data)
    report = _engine(epochs=4).fit(detector, train)
    history = report["history"]
    assert [record["epoch"] for record in history] == [1, 2, 3, 4]  # Engine.epochs overrides the config's 2
    assert history[-1]["loss"] < history[0]["loss"]
    assert bool(detector.is_fitted)
    assert len(_engine().fit(TinyGrad(), train)["history"]) == 2  # the detector's default


class _NaNAt(TinyGrad):
    """Returns a NaN (or infinite) loss at one (epoch, step)."""

    bad_value = float("nan")

    def fit_begin(self):
        self.calls = 0

    def training_step(self, batch):
        loss = super().training_step(batch)
        self.calls += 1
        return loss * self.bad_value if self.calls == 5 else loss  # 3 steps/epoch: epoch 2, step 1


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_diverging_loss_raises_with_epoch_and_step(data, bad_value):
    detector = _NaNAt()
    detector.bad_value = bad_value
    train, _ = _datasets(detector, data)
    with pytest.raises(TrainingDivergedError) as info:
        _engine().fit(detector, train)
    message = str(info.value)
    assert "tiny-grad" in message and "epoch 2, step 1" in message
    assert ("nan" if math.isnan(bad_value) else "inf") in message
    assert not bool(detector.is_fitted)


class _Clipped(TinyGrad):
    @property
    def training_spec(self):
        return TrainingSpec.gradient(self, epochs=1, gradient_clip_norm=1e-6)


def test_gradient_clipping_is_applied(data):
    torch.manual_seed(0)
    clipped = _Clipped(learning_rate=1.0)
    before = copy.deepcopy(clipped.net.state_dict())
    train, _ = _datasets(clipped, data)
    _engine().fit(clipped, train)
    # 3 SGD steps of lr 1 with gradients of norm <= 1e-6 move each weight by <= 3e-6.
    moved = max((clipped.net.state_dict()[k] - before[k]).abs().max().item() for k in before)
    assert 0 < moved <= 3.1e-6


class _Validated(TinyGrad):
    @property
    def training_spec(self):
        return TrainingSpec.gradient(self, epochs=2, validate_every=1)


def test_validate_every_records_validation_auroc(data):
    detector = _Validated()
    train, test = _datasets(detector, data)
    history = _engine().fit(detector, train, test)["history"]
    assert all(0.0 <= record["val_image_auroc"] <= 1.0 for record in history)


def test_unfitted_detector_raises_not_fitted(data):
    detector = TinyMean()
    _, test = _datasets(detector, data)
    with pytest.raises(NotFittedError, match="'tiny-mean' is not fitted"):
        _engine().predict(detector, test)
    with pytest.raises(NotFittedError):
        detector.predict(torch.zeros(1, 3, 64, 64))


def test_check_images_rejects_bad_input():
    detector = TinyMean()
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 3, H, W\), got \(2, 1, 8, 8\)"):
        detector.check_images(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"got \(3, 8, 8\)"):
        detector.check_images(torch.zeros(3, 8, 8))
    for bad in (float("nan"), float("inf")):
        images = torch.zeros(2, 3, 8, 8)
        images[1, 2, 3, 4] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            detector.check_images(images)
    detector.check_images(torch.zeros(2, 3, 8, 8))  # fine input passes


def test_fit_once_then_calibrate_and_test(data):
    detector = TinyMean()
    train, test = _datasets(detector, data)
    engine = _engine()
    report = engine.fit(detector, train, test)
    assert report["history"] == []
    assert report["calibration"]["image_threshold_rule"] == "f1"
    assert report["calibration"]["pixel_threshold_rule"] == "f1"
    assert detector.post_processor.is_calibrated

    metrics, predictions = engine.test(detector, test)
    # The bright squares are easy: a per-pixel mean model separates them perfectly.
    assert metrics["image_auroc"] == pytest.approx(1.0)
    assert metrics["pixel_auroc"] > 0.95
    assert metrics["image_accuracy_at_threshold"] == pytest.approx(1.0)
    assert predictions.labels.tolist() == [0] * 4 + [1] * 4
    assert predictions.masks.shape == (8, 1, 64, 64)
    assert predictions.paths == [str(r.path) for r in data.test]


def test_fit_without_validation_does_not_calibrate(data):
    detector = TinyMean()
    train, _ = _datasets(detector, data)
    report = _engine().fit(detector, train)
    assert "calibration" not in report and not detector.post_processor.is_calibrated


def test_unlabelled_data_gives_no_labels_or_masks(data):
    detector = TinyMean()
    train, _ = _datasets(detector, data)
    engine = _engine()
    engine.fit(detector, train)
    unlabelled = AnomalyDataset([ImageRecord(r.path) for r in data.test], detector.input_spec)
    predictions = engine.predict(detector, unlabelled)
    assert predictions.labels is None and predictions.masks is None
    assert predictions.scores.shape == (8,)
    metrics, _ = engine.test(detector, unlabelled)
    assert "image_auroc" not in metrics


class _WithInitialPass(TinyGrad):
    """Records the order of the loop's calls: the initial pass must precede the optimizer."""

    @property
    def training_spec(self):
        return TrainingSpec.gradient(self, epochs=1, initial_pass=True)

    def fit_begin(self):
        self.calls, self.seen, self.grad_enabled = ["fit_begin"], 0, set()

    def initial_pass_batch(self, batch):
        self.calls.append("initial_pass_batch")
        self.seen += batch.image.shape[0]
        self.grad_enabled.add(torch.is_grad_enabled())

    def initial_pass_end(self):
        self.calls.append("initial_pass_end")

    def configure_optimizers(self, budget):
        self.calls.append("configure_optimizers")
        return super().configure_optimizers(budget)

    def training_step(self, batch):
        self.calls.append("training_step")
        return super().training_step(batch)


def test_initial_pass_sees_every_image_once_without_gradients_before_training(data):
    detector = _WithInitialPass()
    train, _ = _datasets(detector, data)
    _engine().fit(detector, train)
    assert detector.seen == len(train)
    assert detector.grad_enabled == {False}
    first_step = detector.calls.index("training_step")
    assert detector.calls.index("initial_pass_end") < detector.calls.index("configure_optimizers") < first_step
    assert detector.calls[0] == "fit_begin" and detector.calls.count("initial_pass_end") == 1


class _OnFrozenFeatures(TinyGrad):
    """Trains a 1x1 conv on the features of a frozen 'encoder', read through training_features."""

    def __init__(self, **overrides):
        super().__init__(**overrides)
        self.encoder = torch.nn.Conv2d(3, 3, kernel_size=3, padding=1).requires_grad_(False)
        self.images_encoded = 0
        self.cache_open_in_training: list[bool] = []

    def frozen_features(self, images):
        self.images_encoded += images.shape[0]
        return [self.encoder(images)]

    def training_step(self, batch):
        self.cache_open_in_training.append(self._frozen_feature_cache is not None)
        (features,) = self.training_features(batch)
        return torch.nn.functional.mse_loss(self.net(features), features.detach() * 0.5)


def test_frozen_features_are_computed_once_per_image_during_a_gradient_fit(data):
    detector = _OnFrozenFeatures(epochs=3)
    train, _ = _datasets(detector, data)
    _engine().fit(detector, train)
    assert detector.images_encoded == len(train)  # 3 epochs, each image encoded once
    assert all(detector.cache_open_in_training)
    assert detector._frozen_feature_cache is None  # closed after the fit: its memory is freed
    # Outside a fit, training_features computes them (same values as the cache gave).
    batch = next(iter(_engine()._loader(train, shuffle=False)))
    (direct,) = detector.training_features(batch)
    torch.testing.assert_close(direct, detector.encoder(batch.image))


def test_the_feature_cache_is_closed_when_training_fails(data):
    detector = _OnFrozenFeatures(epochs=2, learning_rate=float("inf"))
    train, _ = _datasets(detector, data)
    with pytest.raises(TrainingDivergedError):
        _engine().fit(detector, train)
    assert detector._frozen_feature_cache is None
