"""The Engine runs every phase kind the eighteen models need, with tiny detectors.

Step budgets with per-step schedulers (EfficientAd), two optimizers stepped alternately
(GANomaly), auxiliary image streams (EfficientAd's penalty images), training-time
augmentation that the frozen-feature cache never serves (DRAEM, DSR), stages over
different sub-networks (DSR), passes after training over held-out images (EfficientAd's
map quantiles) with validation only on a completed detector, few-shot selection and
zero-shot detectors that need no fit (WinCLIP).
"""

from __future__ import annotations

import copy

import attrs
import pytest
import torch
import torch.nn.functional as F
from adcore import AnomalyDataset, Batch, Budget, DetectorOutput, Optimization, Pass, Stage, TrainingSpec
from adcore.data import load_data
from adcore.engine import Engine, TrainingDivergedError
from adcore.training import HELD_OUT, TrainingKind
from tiny_detectors import TinyGrad, TinyMean
from torch import nn


@pytest.fixture
def data(shared_mvtec):
    return load_data(f"mvtec:{shared_mvtec}")


def _engine(**kwargs) -> Engine:
    return Engine(device="cpu", progress=False, batch_size=4, log=lambda message: None, **kwargs)


def _train(detector, splits) -> AnomalyDataset:
    return AnomalyDataset(splits.train, detector.input_spec)


def _test(detector, splits) -> AnomalyDataset:
    return AnomalyDataset(splits.test, detector.input_spec, has_masks=True)


# -- a step budget with a per-step scheduler -------------------------------------------------
class StepBudget(TinyGrad):
    """EfficientAd's shape: a budget in steps and a learning rate that decays per step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.learning_rates: list[float] = []
        self.budgets: list[Budget] = []

    @property
    def training_spec(self) -> TrainingSpec:
        return TrainingSpec([Stage("train", self.step, self.optimizers, steps=7, scheduler_interval="step")])

    def optimizers(self, budget: Budget):
        self.budgets.append(budget)
        optimizer = torch.optim.SGD(self.parameters(), lr=1.0)
        # Halve the rate after 95 % of the budget (EfficientAd's schedule, scaled to it).
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(0.95 * budget.total_steps), gamma=0.5)
        self._optimizer = optimizer
        return optimizer, scheduler

    def step(self, batch: Batch) -> torch.Tensor:
        self.learning_rates.append(self._optimizer.param_groups[0]["lr"])
        return self.training_step(batch)


def test_a_step_budget_runs_exactly_its_steps_across_epochs_with_a_per_step_scheduler(data):
    detector = StepBudget()
    report = _engine().fit(detector, _train(detector, data))  # 12 images, batch 4: 3 steps per epoch
    assert detector.budgets == [Budget(epochs=None, steps=7, steps_per_epoch=3)]
    assert detector.budgets[0].total_steps == 7
    assert len(detector.learning_rates) == 7  # 2 full epochs + 1 step of a third
    assert detector.learning_rates == [1.0] * 6 + [0.5]  # stepped per step: halved after int(0.95 * 7) = 6
    assert [r["step"] for r in report["history"]] == [3, 6, 7]
    assert bool(detector.is_fitted)


def test_steps_override_and_epochs_override_apply_to_their_own_budgets(data):
    detector = StepBudget()
    _engine(steps=2).fit(detector, _train(detector, data))
    assert len(detector.learning_rates) == 2
    with pytest.raises(ValueError, match="no stage trained for epochs"):
        _engine(epochs=3).fit(StepBudget(), _train(detector, data))
    with pytest.raises(ValueError, match=r"no stage trained for epochs \(it fits in one pass\)"):
        _engine(epochs=3).fit(TinyMean(), _train(TinyMean(), data))


# -- two optimizers stepped alternately ------------------------------------------------------
class Adversarial(TinyGrad):
    """GANomaly's shape: a discriminator step, then a generator step, in every training step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.critic = nn.Conv2d(3, 1, kernel_size=1)
        self.order: list[str] = []
        self.poison_at: int | None = None

    @property
    def training_spec(self) -> TrainingSpec:
        return TrainingSpec([Stage("adversarial", self.adversarial_step, self.optimizers, epochs=2, manual=True)])

    def optimizers(self, budget: Budget) -> Optimization:
        return Optimization(
            {
                "generator": torch.optim.Adam(self.net.parameters(), lr=1e-2),
                "discriminator": torch.optim.Adam(self.critic.parameters(), lr=1e-2),
            }
        )

    def adversarial_step(self, batch: Batch, optimizers) -> dict[str, torch.Tensor]:
        fake = self.net(batch.image)
        real_logit, fake_logit = self.critic(batch.image).mean(), self.critic(fake.detach()).mean()
        discriminator_loss = F.softplus(-real_logit) + F.softplus(fake_logit)
        if self.poison_at is not None and len(self.order) // 2 == self.poison_at:
            discriminator_loss = discriminator_loss * float("nan")
        optimizers.step("discriminator", discriminator_loss)
        self.order.append("discriminator")
        generator_loss = F.softplus(-self.critic(fake).mean()) + F.mse_loss(fake, batch.image)
        optimizers.step("generator", generator_loss)
        self.order.append("generator")
        return {"generator": generator_loss, "discriminator": discriminator_loss}


def test_two_optimizers_step_alternately_and_each_only_moves_its_own_network(data):
    torch.manual_seed(0)
    detector = Adversarial()
    net_before, critic_before = copy.deepcopy(detector.net.state_dict()), copy.deepcopy(detector.critic.state_dict())
    report = _engine().fit(detector, _train(detector, data))
    assert detector.order == ["discriminator", "generator"] * 6  # 2 epochs x 3 steps
    assert not torch.equal(net_before["weight"], detector.net.weight)
    assert not torch.equal(critic_before["weight"], detector.critic.weight)
    assert {"generator", "discriminator"} <= set(report["history"][0])  # both losses logged per epoch


def test_a_manual_step_still_gets_nan_checks_naming_the_optimizer(data):
    detector = Adversarial()
    detector.poison_at = 4  # epoch 2, second batch
    with pytest.raises(TrainingDivergedError, match=r"loss of 'discriminator' became nan .* epoch 2, step 1"):
        _engine().fit(detector, _train(detector, data))


# -- an auxiliary stream -------------------------------------------------------------------------
@attrs.define
class PenaltyConfig:
    image_size: tuple[int, int] = (32, 32)
    penalty_folder: str = ""


class Penalized(TinyGrad):
    """EfficientAd's shape: every training step also sees a batch of other (natural) images."""

    Config = PenaltyConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[list[str]] = []

    @property
    def training_spec(self) -> TrainingSpec:
        return TrainingSpec(
            [Stage("train", self.penalized_step, self.configure_optimizers, epochs=2, auxiliary=("penalty",))]
        )

    def configure_optimizers(self, budget):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def auxiliary_data(self, stream: str):
        assert stream == "penalty"
        return AnomalyDataset.from_folder(self.config.penalty_folder, self.input_spec) if self.config.penalty_folder else None

    def penalized_step(self, batch: Batch) -> torch.Tensor:
        loss = F.mse_loss(self.net(batch.image), batch.image)
        if "penalty" in batch.auxiliary:
            penalty = batch.auxiliary["penalty"]
            self.seen.append(penalty.path)
            loss = loss + 0.1 * self.net(penalty.image).square().mean()
        return loss


def test_an_auxiliary_stream_attaches_a_batch_to_every_step_cycling_its_images(data, shared_mvtec):
    folder = shared_mvtec / "test" / "scratch"  # 4 images: fewer than the 6 steps, so it cycles
    detector = Penalized(PenaltyConfig(penalty_folder=str(folder)))
    _engine().fit(detector, _train(detector, data))
    assert len(detector.seen) == 6 and all(len(paths) == 4 for paths in detector.seen)
    assert all(p.startswith(str(folder)) for paths in detector.seen for p in paths)

    again = Penalized(PenaltyConfig(penalty_folder=str(folder)))
    _engine().fit(again, _train(again, data))
    assert again.seen == detector.seen  # seeded
    assert torch.equal(again.net.weight, detector.net.weight)


def test_a_missing_auxiliary_stream_trains_without_it_and_says_so(data):
    messages = []
    detector = Penalized()
    Engine(device="cpu", progress=False, batch_size=4, log=messages.append).fit(detector, _train(detector, data))
    assert detector.seen == []
    assert any("trains without auxiliary stream 'penalty'" in m for m in messages)


# -- augmentation bypasses the frozen-feature cache ---------------------------------------------
class Augmenting(TinyGrad):
    """DRAEM's shape: synthetic anomalies pasted into each training batch, with their masks."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.frozen = nn.Conv2d(3, 3, kernel_size=1).requires_grad_(False)
        self.encoded: list[tuple[bool, float]] = []

    @property
    def training_spec(self) -> TrainingSpec:
        return TrainingSpec(
            [Stage("train", self.training_step, self.configure_optimizers, epochs=2, augment=True)]
        )

    def frozen_features(self, images):
        self.encoded.append((True, float(images.sum())))
        return [self.frozen(images)]

    def augment(self, batch: Batch) -> Batch:
        image = batch.image.clone()
        mask = torch.zeros_like(image[:, :1])
        mask[..., 4:12, 4:12] = 1.0
        image = image * (1 - mask) + torch.rand_like(image) * mask
        return attrs.evolve(batch, image=image, mask=mask, label=torch.ones(len(batch), dtype=torch.long))

    def training_step(self, batch: Batch) -> torch.Tensor:
        assert batch.augmented and batch.label.eq(1).all() and batch.mask is not None
        features = self.training_features(batch)[0]
        return F.mse_loss(self.net(batch.image), features)


def test_an_augmenting_stage_never_reads_the_frozen_feature_cache(data):
    detector = Augmenting()
    _engine().fit(detector, _train(detector, data))
    # 2 epochs x 3 batches: every augmented batch is encoded afresh (a cache would encode 3).
    assert len(detector.encoded) == 6
    assert len({total for _, total in detector.encoded}) == 6  # different random pastes each time


def test_an_unaugmented_stage_still_reads_the_cache(data):
    class Cached(Augmenting):
        @property
        def training_spec(self):
            return TrainingSpec([Stage("train", self.cached_step, self.configure_optimizers, epochs=3)])

        def cached_step(self, batch):
            return F.mse_loss(self.net(batch.image), self.training_features(batch)[0])

    detector = Cached()
    _engine().fit(detector, _train(detector, data))
    assert len(detector.encoded) == 3  # each of the 3 batches of images once, for 3 epochs


# -- stages over different sub-networks ---------------------------------------------------------
class TwoStages(TinyGrad):
    """DSR's shape: stage A trains one sub-network, stage B another, each with its optimizer."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.second = nn.Conv2d(3, 3, kernel_size=1)
        self.stages_seen: list[str] = []

    @property
    def training_spec(self) -> TrainingSpec:
        return TrainingSpec(
            [
                Stage("A", self.step_a, lambda budget: torch.optim.SGD(self.net.parameters(), lr=0.1), epochs=1),
                Stage("B", self.step_b, lambda budget: torch.optim.SGD(self.second.parameters(), lr=0.1), steps=2),
            ]
        )

    def step_a(self, batch):
        self.stages_seen.append("A")
        return F.mse_loss(self.net(batch.image), batch.image)

    def step_b(self, batch):
        self.stages_seen.append("B")
        return F.mse_loss(self.second(self.net(batch.image).detach()), batch.image)


def test_stages_run_in_order_each_with_its_own_budget_and_parameters(data):
    torch.manual_seed(0)
    detector = TwoStages()
    report = _engine().fit(detector, _train(detector, data))
    assert detector.stages_seen == ["A"] * 3 + ["B"] * 2
    assert [r["stage"] for r in report["history"]] == ["A", "B"]
    assert detector.training_spec.kind == TrainingKind.GRADIENT


# -- a final pass over held-out images, and validation of a completed detector ----------------
class FinalPass(TinyGrad):
    """EfficientAd's shape: after training, map quantiles over held-out normal images; the
    scores are normalised by them, so a detector before that pass is not finished."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("map_scale", torch.tensor(0.0))  # 0: not finished (scores would be inf)
        self.held_out_paths: list[str] = []
        self.trained_on: set[str] = set()

    @property
    def training_spec(self) -> TrainingSpec:
        return TrainingSpec(
            [
                Stage("train", self.recording_step, self.configure_optimizers, epochs=2),
                Pass("map quantiles", self.measure_maps, self.finish_quantiles, stream=HELD_OUT),
            ],
            held_out_fraction=0.25,
            validate_every=1,
        )

    def recording_step(self, batch):
        self.trained_on.update(batch.path)
        return self.training_step(batch)

    def fit_begin(self):
        self._maxima = []

    def measure_maps(self, batch):
        self.held_out_paths += batch.path
        self._maxima.append(super().forward(batch.image).pred_score)

    def finish_quantiles(self):
        self.map_scale.fill_(float(torch.quantile(torch.cat(self._maxima), 0.9)))

    def forward(self, images):
        assert float(self.map_scale) > 0, "scored before the final pass"
        anomaly_map = (self.net(images) - images).square().mean(dim=1, keepdim=True) / self.map_scale
        return DetectorOutput.from_map(anomaly_map)


def test_a_final_pass_sees_only_held_out_images_and_validation_scores_a_completed_copy(data):
    detector = FinalPass()
    report = _engine().fit(detector, _train(detector, data), _test(detector, data))
    assert len(detector.held_out_paths) == 3  # 25 % of 12
    assert not set(detector.held_out_paths) & detector.trained_on  # kept out of training
    assert len(detector.trained_on) == 9
    # Validation ran each epoch, on a copy completed by the final pass (no "scored before" error).
    assert [0.0 <= r["val_image_auroc"] <= 1.0 for r in report["history"]] == [True, True]
    assert report["images"] == {"train": 9, "held_out": 3}


def test_validating_does_not_change_what_training_learns(data):
    class NotValidated(FinalPass):
        @property
        def training_spec(self):
            return attrs.evolve(super().training_spec, validate_every=0)

    validated, plain = FinalPass(), NotValidated()
    plain.load_state_dict(validated.state_dict())  # the same start
    _engine().fit(validated, _train(validated, data), _test(validated, data))
    _engine().fit(plain, _train(plain, data), _test(plain, data))
    assert torch.equal(validated.net.weight, plain.net.weight)
    assert float(validated.map_scale) == float(plain.map_scale)


# -- few-shot and zero-shot -------------------------------------------------------------------------
class FewShot(TinyMean):
    @property
    def training_spec(self) -> TrainingSpec:
        return attrs.evolve(TrainingSpec.one_pass(self), max_images=2)

    def fit_batch(self, batch):
        self.references = getattr(self, "references", []) + batch.path
        super().fit_batch(batch)


def test_a_few_shot_detector_fits_on_k_seeded_images(data):
    first, again, other = FewShot(), FewShot(), FewShot()
    _engine(seed=0).fit(first, _train(first, data))
    _engine(seed=0).fit(again, _train(again, data))
    _engine(seed=5).fit(other, _train(other, data))
    assert len(first.references) == 2 and first.references == again.references
    assert other.references != first.references


class ZeroShot(TinyMean):
    """WinCLIP's shape: scores from prior knowledge alone (here: brightness)."""

    name = "tiny-zero-shot"

    @property
    def training_spec(self) -> TrainingSpec:
        return TrainingSpec.nothing()

    def fit_end(self):
        pass  # nothing was accumulated

    def forward(self, images):
        anomaly_map = F.avg_pool2d(images, 3, stride=1, padding=1).mean(dim=1, keepdim=True)
        return DetectorOutput.from_map(anomaly_map)


def test_a_zero_shot_detector_scores_without_fitting(data):
    detector = ZeroShot()
    assert not detector.needs_fit and detector.training_spec.kind == TrainingKind.NONE
    predictions = _engine().predict(detector, _test(detector, data))  # no fit, no checkpoint
    assert predictions.scores[4:].min() > predictions.scores[:4].max()  # bright squares
    report = _engine().fit(detector, [], None)  # fitting on nothing is fine: nothing to fit
    assert report["history"] == [] and bool(detector.is_fitted)


def test_predict_command_runs_a_zero_shot_detector_without_a_checkpoint(shared_mvtec, tmp_path, capsys):
    from adcore import hookimpl
    from adcore.cli import main
    from adcore.plugins import PluginRegistry, set_registry

    class Plugin:
        ADCORE_API = ">=2,<3"

        @hookimpl
        def adcore_register_detectors(self, register):
            register(ZeroShot)

    registry = PluginRegistry()
    registry.add_plugin(Plugin(), name="zero-shot-plugin")
    set_registry(registry)
    images = shared_mvtec / "test" / "scratch"
    code = main(["predict", "--model", "tiny-zero-shot", str(images), "--output", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    assert (tmp_path / "out" / "predictions.csv").read_text().count("\n") == 5  # header + 4 images
    # A detector that learns from images cannot be used without a checkpoint.
    registry.add_plugin(__import__("tiny_detectors").plugin, name="tiny")
    assert main(["predict", "--model", "tiny-mean", str(images), "--output", str(tmp_path / "x")]) == 2
    assert "fit it first" in capsys.readouterr().err


def test_training_spec_one_liners_and_their_kinds():
    mean, grad = TinyMean(), TinyGrad()
    assert mean.training_spec.kind == TrainingKind.FIT_ONCE
    assert grad.training_spec.kind == TrainingKind.GRADIENT and grad.training_spec.epochs == 2
    assert TrainingSpec.nothing().kind == TrainingKind.NONE
    with pytest.raises(ValueError, match="exactly one budget"):
        Stage("x", grad.training_step, grad.configure_optimizers, epochs=1, steps=1)
    with pytest.raises(ValueError, match="held_out_fraction"):
        TrainingSpec([Pass("q", print, stream=HELD_OUT)])
    spec = TrainingSpec.gradient(grad, epochs=3, initial_pass=True)
    assert spec.describe() == [
        {"pass": "initial pass", "stream": "train"},
        {"stage": "train", "epochs": 3, "manual": False, "auxiliary": []},
    ]
