"""What fitting a detector means, as a sequence of phases the Engine runs.

A detector's ``training_spec`` lists its phases in the order of its paper:

* :class:`Pass`: one pass without gradients over a data stream (statistics, a memory
  bank, map quantiles after training);
* :class:`Stage`: an optimizer (or several) trained for a budget in epochs or steps.

The common cases stay one line (:meth:`TrainingSpec.one_pass`, :meth:`TrainingSpec.gradient`,
:meth:`TrainingSpec.nothing`); the Engine does everything else (seeding, data order, the
frozen-feature cache, NaN checks, clipping, schedulers, logging, validation).

Data streams a phase can read: ``"train"`` (the training images), ``"held_out"`` (a
seeded fraction of the training images kept out of every other phase:
``TrainingSpec.held_out_fraction``) and the names of the detector's auxiliary streams
(``AnomalyDetector.auxiliary_data``), which a Stage attaches to every batch.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
import torch

TRAIN = "train"
HELD_OUT = "held_out"


class TrainingKind(str, enum.Enum):
    """How the loop fits a detector (derived from its phases)."""

    FIT_ONCE = "fit_once"  # passes without gradients only (memory bank, density)
    GRADIENT = "gradient"  # at least one optimizer stage
    NONE = "none"  # nothing to fit (zero-shot)


@attrs.frozen
class Budget:
    """A Stage's budget, resolved by the Engine before the optimizers are built.

    Schedulers that must span the whole training (EfficientAd's step decay) read
    ``total_steps``; it counts optimizer steps (batches), also for epoch budgets.
    """

    epochs: int | None
    steps: int | None
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        return self.steps if self.steps is not None else (self.epochs or 0) * self.steps_per_epoch


@attrs.frozen
class Pass:
    """A pass without gradients over one data stream: ``on_batch`` per batch, then ``on_end``."""

    name: str
    on_batch: Callable[[Any], None]
    on_end: Callable[[], None] | None = None
    stream: str = TRAIN


def _check_budget(instance: Stage, _attribute, _value) -> None:
    if (instance.epochs is None) == (instance.steps is None):
        raise ValueError(f"stage '{instance.name}': give exactly one budget, epochs or steps")
    budget = instance.epochs if instance.epochs is not None else instance.steps
    if budget < 0:
        raise ValueError(f"stage '{instance.name}': the budget must be >= 0, got {budget}")


@attrs.frozen
class Stage:
    """Optimizer steps over the training stream.

    ``optimizers(budget)`` returns an optimizer, ``(optimizer, scheduler)``, or a
    :class:`Optimization` of several named ones. ``step(batch)`` returns the loss; the
    Engine checks it, back-propagates and steps. With ``manual=True`` (adversarial
    training) ``step(batch, optimizers)`` calls ``optimizers.step(name, loss)`` itself,
    as often as the method needs, and returns its losses by name for the log; the
    Engine still checks every loss, clips, steps the schedulers and reports progress.
    """

    name: str
    step: Callable[..., Any]
    optimizers: Callable[[Budget], Any]
    epochs: int | None = attrs.field(default=None, validator=_check_budget)
    steps: int | None = None
    #: When schedulers step: after every "epoch" or after every optimizer "step".
    scheduler_interval: Literal["epoch", "step"] = attrs.field(
        default="epoch", validator=attrs.validators.in_(("epoch", "step"))
    )
    manual: bool = False
    #: Clip gradients to this global norm (None: no clipping).
    gradient_clip_norm: float | None = None
    #: Auxiliary streams attached to every batch (``batch.auxiliary[name]``).
    auxiliary: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    #: Call the detector's ``augment`` on every training batch (synthetic anomalies, ...).
    augment: bool = False
    #: Called after the stage's last step (e.g. to store a reference from training).
    on_end: Callable[[], None] | None = None


@attrs.frozen
class Optimization:
    """Several named optimizers (and their schedulers) for one Stage."""

    optimizers: Mapping[str, torch.optim.Optimizer]
    schedulers: Mapping[str, Any] = attrs.field(factory=dict)

    @classmethod
    def of(cls, configured: Any) -> Optimization:
        """Accepts what a Stage's ``optimizers`` returns: one optimizer, a pair, or this."""
        if isinstance(configured, Optimization):
            return configured
        if isinstance(configured, tuple):
            optimizer, scheduler = configured
            return cls({"main": optimizer}, {} if scheduler is None else {"main": scheduler})
        if isinstance(configured, torch.optim.Optimizer):
            return cls({"main": configured})
        raise TypeError(
            f"a stage's optimizers must return an optimizer, (optimizer, scheduler) or Optimization, "
            f"got {type(configured).__name__}"
        )


Phase = Pass | Stage


@attrs.frozen
class TrainingSpec:
    """The phases the Engine runs to fit a detector, in order."""

    phases: tuple[Phase, ...] = attrs.field(default=(), converter=tuple)
    #: Evaluate on validation data every N epochs of a Stage (0: only at the end).
    validate_every: int = 0
    #: Fraction of the training images kept out of training for ``stream="held_out"`` passes.
    held_out_fraction: float = 0.0
    #: Few-shot methods: use at most this many training images (chosen with the seed).
    max_images: int | None = None

    def __attrs_post_init__(self) -> None:
        uses_held_out = any(isinstance(p, Pass) and p.stream == HELD_OUT for p in self.phases)
        if uses_held_out and not 0 < self.held_out_fraction < 1:
            raise ValueError("a pass over 'held_out' images needs 0 < held_out_fraction < 1")

    @property
    def kind(self) -> TrainingKind:
        if any(isinstance(p, Stage) for p in self.phases):
            return TrainingKind.GRADIENT
        return TrainingKind.FIT_ONCE if self.phases else TrainingKind.NONE

    @property
    def stages(self) -> list[Stage]:
        return [p for p in self.phases if isinstance(p, Stage)]

    @property
    def epochs(self) -> int | None:
        """The epochs of the first epoch-budgeted stage (``--epochs`` overrides every epoch-budgeted stage)."""
        return next((s.epochs for s in self.stages if s.epochs is not None), None)

    # -- the common cases, one line each --------------------------------------------------
    @classmethod
    def one_pass(cls, detector: Any) -> TrainingSpec:
        """One pass over the training images: ``fit_batch`` per batch, then ``fit_end``."""
        return cls((Pass("fit", detector.fit_batch),))

    @classmethod
    def gradient(
        cls,
        detector: Any,
        epochs: int | None = None,
        steps: int | None = None,
        initial_pass: bool = False,
        gradient_clip_norm: float | None = None,
        validate_every: int = 0,
    ) -> TrainingSpec:
        """``training_step`` with ``configure_optimizers`` for a budget, optionally after a
        pass (``initial_pass_batch``/``initial_pass_end``) that prepares statistics or a bank."""
        phases: list[Phase] = []
        if initial_pass:
            phases.append(Pass("initial pass", detector.initial_pass_batch, detector.initial_pass_end))
        phases.append(
            Stage(
                "train",
                detector.training_step,
                detector.configure_optimizers,
                epochs=epochs,
                steps=steps,
                gradient_clip_norm=gradient_clip_norm,
            )
        )
        return cls(tuple(phases), validate_every=validate_every)

    @classmethod
    def nothing(cls) -> TrainingSpec:
        """Zero-shot: there is nothing to fit."""
        return cls(())

    def describe(self) -> list[dict[str, Any]]:
        """The phases as JSON (for reports and cards)."""
        out = []
        for phase in self.phases:
            if isinstance(phase, Pass):
                out.append({"pass": phase.name, "stream": phase.stream})
            else:
                budget = {"epochs": phase.epochs} if phase.epochs is not None else {"steps": phase.steps}
                out.append({"stage": phase.name, **budget, "manual": phase.manual, "auxiliary": list(phase.auxiliary)})
        return out


def batches_per_epoch(num_images: int, batch_size: int) -> int:
    return max(1, math.ceil(num_images / batch_size))
