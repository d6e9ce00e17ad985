"""The pure-PyTorch loop: fit (the detector's phases), calibrate, test, predict.

The loop asks the detector what it needs (:class:`~adcore.training.TrainingSpec`: passes
and stages in order) and does nothing model-specific itself, so every plugin gets the
same seeding, data order, frozen-feature cache, progress bars, NaN checks, gradient
clipping, schedulers, bf16 autocast, validation and post-processing.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import attrs
import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from adcore import distributed
from adcore.batch import Batch
from adcore.data.video_dataset import collate_samples, is_video_dataset
from adcore.detector import AnomalyDetector
from adcore.metrics import compute_metrics, image_auroc
from adcore.postprocess import DEFAULT_NORMAL_QUANTILE
from adcore.prediction_store import DEFAULT_CHUNK_IMAGES, PredictionStore, StoredArray, is_stored
from adcore.seed import resolve_device, seed_everything
from adcore.training import HELD_OUT, TRAIN, Budget, Optimization, Pass, Stage, TrainingKind, TrainingSpec

PRECISIONS = ("fp32", "bf16")


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@attrs.define
class Predictions:
    """Raw detector outputs over a dataset, with its ground truth where known.

    ``maps`` and ``masks`` are tensors, or, for runs too large for memory,
    :class:`~adcore.prediction_store.StoredArray` objects reading from a temporary file
    (same ``[index]``, ``[a:b]``, ``[index, 0]``, ``.shape``, ``len``; :meth:`chunks` and
    :meth:`read_maps` work on both). See :mod:`adcore.prediction_store`.
    """

    paths: list[str]
    scores: torch.Tensor  # (N,)
    maps: torch.Tensor | StoredArray | None  # (N, 1, H, W)
    labels: torch.Tensor | None  # (N,)
    masks: torch.Tensor | StoredArray | None  # (N, 1, H, W)
    seconds: float = 0.0
    regions: list[torch.Tensor] | None = None  # per image (K, 5): x0, y0, x1, y1, score (input pixels)

    @property
    def images_per_second(self) -> float:
        return len(self.paths) / self.seconds if self.seconds > 0 else math.inf

    @property
    def on_disk(self) -> bool:
        """Whether maps/masks were spilled to temporary files (metrics are then binned)."""
        return is_stored(self.maps) or is_stored(self.masks)

    def read_maps(self, indices) -> torch.Tensor | None:
        """Maps of some images (a list of indices), reading only those when on disk."""
        return None if self.maps is None else self.maps[list(indices)]

    def read_masks(self, indices) -> torch.Tensor | None:
        return None if self.masks is None else self.masks[list(indices)]

    def chunks(
        self, size: int = DEFAULT_CHUNK_IMAGES
    ) -> Iterator[tuple[int, torch.Tensor | None, torch.Tensor | None]]:
        """``(start, maps, masks)`` for ``size`` images at a time (None where absent)."""
        for start in range(0, len(self.paths), size):
            stop = start + size
            yield (
                start,
                None if self.maps is None else self.maps[start:stop],
                None if self.masks is None else self.masks[start:stop],
            )

    def close(self) -> None:
        """Remove spilled maps/masks now (otherwise when these predictions are garbage-collected)."""
        for values in (self.maps, self.masks):
            if is_stored(values):
                values._directory.close()


class OptimizerSteps:
    """What a Stage's step function sees in manual mode: ``step(name, loss)`` per optimizer.

    Each call checks the loss, clears that optimizer's gradients, back-propagates, clips
    and steps (and steps its scheduler when the stage schedules per step).
    """

    def __init__(self, optimization: Optimization, stage: Stage, detector_name: str) -> None:
        self.optimizers = dict(optimization.optimizers)
        self.schedulers = dict(optimization.schedulers)
        self.stage = stage
        self.detector_name = detector_name
        self.epoch, self.batch_index = 0, 0

    def check(self, loss: torch.Tensor, what: str = "loss") -> None:
        if not torch.isfinite(loss).all():
            raise TrainingDivergedError(
                f"{self.detector_name}: training {what} became {loss.detach().float().mean().item()} in stage "
                f"'{self.stage.name}' at epoch {self.epoch}, step {self.batch_index}; "
                "lower the learning rate or check the input data"
            )

    def _optimizer(self, name: str) -> torch.optim.Optimizer:
        if name not in self.optimizers:
            raise KeyError(f"{self.detector_name}: stage '{self.stage.name}' has no optimizer '{name}' ({sorted(self.optimizers)})")
        return self.optimizers[name]

    def step(self, name: str, loss: torch.Tensor) -> None:
        """One optimizer step of ``name`` on ``loss``."""
        self.check(loss, f"loss of '{name}'")
        self._step([name], loss)

    def step_all(self, loss: torch.Tensor) -> None:
        """Every optimizer of the stage on one loss (the automatic mode)."""
        self.check(loss)
        self._step(list(self.optimizers), loss)

    def _step(self, names: list[str], loss: torch.Tensor) -> None:
        optimizers = [self._optimizer(name) for name in names]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Several processes: average the gradients (DDP's arithmetic), so every process takes the same step.
        distributed.average_gradients(
            p for optimizer in optimizers for group in optimizer.param_groups for p in group["params"]
        )
        for name, optimizer in zip(names, optimizers):
            if self.stage.gradient_clip_norm is not None:
                parameters = [p for group in optimizer.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(parameters, self.stage.gradient_clip_norm)
            optimizer.step()
            if self.stage.scheduler_interval == "step" and name in self.schedulers:
                self.schedulers[name].step()

    def end_of_epoch(self) -> None:
        if self.stage.scheduler_interval == "epoch":
            for scheduler in self.schedulers.values():
                scheduler.step()


@attrs.define
class Engine:
    """Runs detectors; every run with the same ``seed`` gives the same scores."""

    device: str = "auto"
    seed: int = 0
    batch_size: int = 16
    num_workers: int = 0
    precision: str = attrs.field(default="fp32", validator=attrs.validators.in_(PRECISIONS))
    progress: bool = True
    normal_quantile: float = DEFAULT_NORMAL_QUANTILE
    #: Overrides the epochs of every epoch-budgeted stage.
    epochs: int | None = None
    #: Overrides the steps of every step-budgeted stage.
    steps: int | None = None
    #: Overrides the detector's validation interval in epochs (0: never during training).
    validate_every: int | None = None
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr)

    # -- helpers ---------------------------------------------------------------------------
    @property
    def torch_device(self) -> torch.device:
        return distributed.local_device(resolve_device(self.device))

    def _loader(self, dataset, shuffle: bool, generator: torch.Generator | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
        )

    def _train_loader(self, dataset, generator: torch.Generator) -> DataLoader:
        """Shuffled training batches; with several processes, this process's share of each global batch."""
        if distributed.world_size() == 1:
            return self._loader(dataset, shuffle=True, generator=generator)
        sampler = distributed.ShardedBatchSampler(
            len(dataset), self.batch_size, generator, distributed.world_size(), distributed.rank()
        )
        return DataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers, collate_fn=collate_samples)

    def _bar(self, iterable, description: str, total: int | None = None):
        show = self.progress and distributed.is_main_process()
        return tqdm(iterable, desc=description, total=total, disable=not show, leave=False, file=sys.stderr)

    def _say(self, message: str) -> None:
        if distributed.is_main_process():
            self.log(message)

    def autocast(self):
        """bf16 autocast (AMX on recent x86 CPUs, tensor cores on GPUs) when asked for."""
        if self.precision == "bf16":
            return torch.autocast(device_type=self.torch_device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- fit ----------------------------------------------------------------------------------
    def fit(self, detector: AnomalyDetector, train, val=None, calibrate: bool = True) -> dict:
        """Run the detector's phases, then (unless ``calibrate=False``) calibrate thresholds on ``val``.

        ``val`` also serves validation during training (``validate_every``), which scores a
        copy of the detector completed as if training stopped there.

        Launched by torchrun (``adcore fit --nproc N``), the processes share the work
        (:mod:`adcore.distributed`); process 0 ends with the fitted detector, the others
        return after the last phase with ``report["process"]`` set and their detector unfinished.
        """
        spec = detector.training_spec
        self._check_overrides(detector, spec)
        check_video_data(detector, train)
        if spec.kind != TrainingKind.NONE and len(train) == 0:
            raise ValueError(f"{detector.name}: the training dataset is empty: there are no images to fit on")
        several = distributed.initialize(self.torch_device)
        generator = seed_everything(self.seed)
        detector.to(self.torch_device)
        if several:
            distributed.broadcast_parameters(detector)
            # Augmentations differ between processes (their images do); the data order stays shared.
            torch.manual_seed(self.seed + 1_000_003 * distributed.rank())
            if not detector.supports_sharded_fit and any(isinstance(p, Pass) for p in spec.phases):
                self._say(f"{detector.name} cannot combine shards: every process reads all images in its passes")
        streams = self._streams(spec, train, generator)
        started = time.perf_counter()
        history: list[dict] = []
        caching = detector.caching_frozen_features() if spec.kind == TrainingKind.GRADIENT else contextlib.nullcontext()
        with caching:
            detector.fit_begin()
            for index, phase in enumerate(spec.phases):
                if isinstance(phase, Pass):
                    self._run_pass(detector, phase, streams)
                else:
                    history += self._run_stage(detector, index, streams, generator, spec, val)
            if not distributed.is_main_process():  # process 0 finishes the fit; this one's part is done
                return {"fit_seconds": time.perf_counter() - started, "history": history, "process": distributed.rank()}
            detector.fit_end()
        detector.is_fitted.fill_(True)
        report: dict = {
            "fit_seconds": time.perf_counter() - started,
            "history": history,
            "phases": spec.describe(),
            "images": {name: len(data) for name, data in streams.items() if data is not None},
        }
        if several:
            report["processes"] = distributed.world_size()
        if calibrate and val is not None and len(val) > 0:
            report["calibration"] = self.calibrate(detector, self.predict(detector, val, description="calibrate"))
        return report

    def _check_overrides(self, detector: AnomalyDetector, spec: TrainingSpec) -> None:
        if self.epochs is not None and not any(s.epochs is not None for s in spec.stages):
            raise ValueError(f"epochs: detector '{detector.name}' has no stage trained for epochs ({self._kind(spec)})")
        if self.steps is not None and not any(s.steps is not None for s in spec.stages):
            raise ValueError(f"steps: detector '{detector.name}' has no stage trained for steps ({self._kind(spec)})")

    @staticmethod
    def _kind(spec: TrainingSpec) -> str:
        return {
            TrainingKind.FIT_ONCE: "it fits in one pass",
            TrainingKind.NONE: "it needs no fitting",
            TrainingKind.GRADIENT: "its stages are budgeted otherwise",
        }[spec.kind]

    def _streams(self, spec: TrainingSpec, train, generator: torch.Generator) -> dict:
        """The training images, few-shot selection and held-out split applied (seeded)."""
        if spec.kind == TrainingKind.NONE:
            return {TRAIN: train}
        if spec.max_images is not None and len(train) > spec.max_images:
            chosen = torch.randperm(len(train), generator=generator)[: spec.max_images].sort().values
            train = Subset(train, chosen.tolist())
        streams = {TRAIN: train}
        if spec.held_out_fraction > 0:
            count = len(train)
            held = min(count - 1, max(1, round(spec.held_out_fraction * count)))
            if held < 1:
                raise ValueError(f"a held-out split needs at least 2 training images, got {count}")
            order = torch.randperm(count, generator=generator).tolist()
            streams[HELD_OUT] = Subset(train, sorted(order[:held]))
            streams[TRAIN] = Subset(train, sorted(order[held:]))
        return streams

    def _stream(self, detector: AnomalyDetector, name: str, streams: dict):
        if name in streams:
            return streams[name]
        return detector.auxiliary_data(name)

    def _run_pass(self, detector: AnomalyDetector, phase: Pass, streams: dict, shared: bool = True) -> None:
        """One pass; ``shared`` (the fit itself): several processes split it when the detector combines shards."""
        data = self._stream(detector, phase.stream, streams)
        if data is None:
            raise ValueError(f"{detector.name}: pass '{phase.name}' has no data in stream '{phase.stream}'")
        sharded = shared and distributed.world_size() > 1 and detector.supports_sharded_fit
        if sharded:
            part = distributed.shard(len(data))
            if len(part) == 0:
                raise ValueError(
                    f"{distributed.world_size()} processes need at least as many images as processes "
                    f"in pass '{phase.name}', got {len(data)}"
                )
            data = Subset(data, list(part))
        detector.eval()
        with torch.no_grad(), self.autocast():
            for batch in self._bar(self._loader(data, shuffle=False), f"{phase.name} ({detector.name})"):
                phase.on_batch(batch.to(self.torch_device))
        if sharded:
            detector.combine_shards()
        if phase.on_end is not None:
            phase.on_end()

    def _auxiliary_batches(self, detector: AnomalyDetector, stage: Stage) -> dict[str, Iterator[Batch]]:
        """An endless, seeded, reshuffled iterator per auxiliary stream (None data: skipped, said once)."""
        iterators = {}
        for offset, name in enumerate(stage.auxiliary, start=1):
            data = detector.auxiliary_data(name)
            if data is None:
                self._say(f"{detector.name}: stage '{stage.name}' trains without auxiliary stream '{name}' (no data)")
                continue
            generator = torch.Generator().manual_seed(self.seed + 7919 * offset)  # its own order, not the train's
            iterators[name] = _endless(self._loader(data, shuffle=True, generator=generator))
        return iterators

    def _run_stage(
        self, detector: AnomalyDetector, index: int, streams: dict, generator: torch.Generator, spec: TrainingSpec, val
    ) -> list[dict]:
        stage: Stage = spec.phases[index]
        loader = self._train_loader(streams[TRAIN], generator)
        epochs = self.epochs if self.epochs is not None and stage.epochs is not None else stage.epochs
        steps = self.steps if self.steps is not None and stage.steps is not None else stage.steps
        budget = Budget(epochs=epochs, steps=steps, steps_per_epoch=len(loader))
        steps_out = OptimizerSteps(Optimization.of(stage.optimizers(budget)), stage, detector.name)
        auxiliary = self._auxiliary_batches(detector, stage)
        every = self.validate_every if self.validate_every is not None else spec.validate_every
        total, done, history = budget.total_steps, 0, []
        epochs_total = epochs if epochs is not None else math.ceil(total / max(1, len(loader)))
        while done < total:
            detector.train()
            steps_out.epoch += 1
            epoch_started, losses = time.perf_counter(), defaultdict(list)
            bar = self._bar(loader, f"{stage.name} {steps_out.epoch}/{epochs_total}", total=min(len(loader), total - done))
            for batch_index, batch in enumerate(bar):
                if done >= total:
                    break
                steps_out.batch_index = batch_index
                batch = batch.to(self.torch_device)
                batch.auxiliary = {name: next(it).to(self.torch_device) for name, it in auxiliary.items()}
                if stage.augment:
                    augmented = detector.augment(batch)
                    augmented.augmented = augmented.image is not batch.image
                    batch = augmented
                with self.autocast():
                    if stage.manual:
                        named = stage.step(batch, steps_out)
                    else:
                        loss = stage.step(batch)
                        steps_out.step_all(loss)
                        named = {"loss": loss}
                for name, value in named.items():
                    losses[name].append(float(value.detach().float()) if torch.is_tensor(value) else float(value))
                done += 1
                if "loss" in losses:
                    bar.set_postfix(loss=f"{losses['loss'][-1]:.4f}")
            steps_out.end_of_epoch()
            record = {"stage": stage.name, "epoch": steps_out.epoch, "step": done}
            record.update({name: sum(values) / len(values) for name, values in losses.items() if values})
            record["seconds"] = time.perf_counter() - epoch_started
            due = every and val is not None and len(val) and steps_out.epoch % every == 0
            if due and distributed.is_main_process():  # the other processes go on to the next step
                record["val_image_auroc"] = self._validate(detector, index, streams, val)
            history.append(record)
            self._say(
                f"{stage.name} epoch {steps_out.epoch}/{epochs_total}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k not in ("stage", "epoch"))
            )
        if stage.on_end is not None:
            stage.on_end()
        return history

    def _validate(self, detector: AnomalyDetector, index: int, streams: dict, val) -> float | None:
        """Image AUROC of a copy of the detector completed as if training stopped now.

        The copy runs the current stage's ``on_end``, the passes after it and ``fit_end``
        (later stages are skipped), so a detector whose scores need those (a reference, map
        quantiles) is never scored half-finished. The RNG is restored afterwards:
        validating does not change the training that follows.
        """
        rng = _rng_state()
        cache, detector._frozen_feature_cache = detector._frozen_feature_cache, None
        try:
            snapshot = copy.deepcopy(detector)
        finally:
            detector._frozen_feature_cache = cache
        snapshot._frozen_feature_cache = cache
        try:
            phases = snapshot.training_spec.phases
            if phases[index].on_end is not None:
                phases[index].on_end()
            for phase in phases[index + 1 :]:
                if isinstance(phase, Pass):
                    self._run_pass(snapshot, phase, streams, shared=False)
            snapshot.fit_end()
            snapshot.is_fitted.fill_(True)
            snapshot._frozen_feature_cache = None
            predictions = self.predict(snapshot, val, description="validate")
        finally:
            snapshot._frozen_feature_cache = None
            _set_rng_state(rng)
            detector.train()
        return None if predictions.labels is None else image_auroc(predictions.scores, predictions.labels)

    def calibrate(self, detector: AnomalyDetector, predictions: Predictions) -> dict:
        """Learn thresholds and normalisation from validation predictions; returns a summary."""
        return detector.post_processor.calibrate(
            predictions.scores, predictions.labels, predictions.maps, predictions.masks, self.normal_quantile
        )

    # -- inference ----------------------------------------------------------------------------
    def predict(
        self, detector: AnomalyDetector, dataset, description: str = "predict", spill_bytes: int | None = None
    ) -> Predictions:
        """Raw scores and maps for every image of ``dataset``.

        Maps and masks stay in memory up to ``spill_bytes`` (default 64 MB, or
        ``ADCORE_SPILL_MB``), then go to a temporary file (:class:`PredictionStore`), so memory
        stays flat in the number of images.
        """
        detector.check_fitted()
        check_video_data(detector, dataset)
        clips = detector.input_spec.clip_length > 1  # a video detector scores the clip ending at each frame
        detector.to(self.torch_device).eval()
        store = PredictionStore(spill_bytes)
        started = time.perf_counter()
        with torch.inference_mode(), self.autocast():
            for batch in self._bar(self._loader(dataset, shuffle=False), description):
                batch: Batch
                inputs = batch.frames if clips else batch.image
                output = detector.predict(inputs.to(self.torch_device))
                store.append(
                    paths=batch.path,
                    scores=output.pred_score.float().cpu(),
                    maps=None if output.anomaly_map is None else output.anomaly_map.float().cpu(),
                    labels=batch.label,
                    masks=batch.mask,
                    regions=None if output.regions is None else [r.float().cpu() for r in output.regions],
                )
        return store.finish(seconds=time.perf_counter() - started)

    def test(
        self, detector: AnomalyDetector, dataset, spill_bytes: int | None = None
    ) -> tuple[dict[str, float], Predictions]:
        """Metrics over a labelled dataset (pixel metrics when it has masks; binned when spilled)."""
        predictions = self.predict(detector, dataset, description="test", spill_bytes=spill_bytes)
        return self.evaluate(detector, predictions), predictions

    def evaluate(self, detector: AnomalyDetector, predictions: Predictions) -> dict[str, float]:
        """Metrics of existing predictions (lets a caller reuse validation predictions as test ones)."""
        metrics = compute_metrics(predictions.scores, predictions.labels, predictions.maps, predictions.masks)
        metrics["test_images_per_second"] = predictions.images_per_second
        if detector.post_processor.is_calibrated and predictions.labels is not None:
            predicted = predictions.scores >= float(detector.post_processor.image_threshold)
            metrics["image_accuracy_at_threshold"] = float((predicted.long() == predictions.labels).float().mean())
            true_positives = float((predicted & (predictions.labels == 1)).sum())
            wrong = float((predicted.long() != predictions.labels).sum())
            metrics["image_f1_at_threshold"] = 2 * true_positives / max(2 * true_positives + wrong, 1.0)
        return metrics


def check_video_data(detector: AnomalyDetector, dataset) -> None:
    """A video detector (clips of more than one frame) refuses image data in one line."""
    length = detector.input_spec.clip_length
    if length > 1 and dataset is not None and len(dataset) > 0 and not is_video_dataset(dataset):
        raise ValueError(
            f"{detector.name} is a video detector (clips of {length} frames) and {type(dataset).__name__} holds "
            "images: give it video data (video:PATH)"
        )


def _rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.random.get_rng_state(), cuda, np.random.get_state(), random.getstate()


def _set_rng_state(state: tuple) -> None:
    cpu, cuda, numpy_state, python_state = state
    torch.random.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    np.random.set_state(numpy_state)
    random.setstate(python_state)


def _endless(loader: DataLoader) -> Iterator[Batch]:
    """Batches of ``loader`` forever, reshuffled every pass."""
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            return
