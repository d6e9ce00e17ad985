"""The pure-PyTorch loop: fit (one pass or epochs of gradients), calibrate, test, predict.

The loop asks the detector what it needs (:class:`~adcore.protocols.TrainingSpec`) and
does nothing model-specific itself, so every plugin gets the same seeding, progress
bars, NaN checks, gradient clipping, bf16 autocast and post-processing.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable

import attrs
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from adcore.batch import Batch
from adcore.data.dataset import AnomalyDataset, collate
from adcore.detector import AnomalyDetector
from adcore.metrics import compute_metrics, image_auroc
from adcore.postprocess import DEFAULT_NORMAL_QUANTILE
from adcore.protocols import TrainingKind
from adcore.seed import resolve_device, seed_everything

PRECISIONS = ("fp32", "bf16")


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@attrs.define
class Predictions:
    """Raw detector outputs over a dataset, with its ground truth where known."""

    paths: list[str]
    scores: torch.Tensor  # (N,)
    maps: torch.Tensor | None  # (N, 1, H, W)
    labels: torch.Tensor | None  # (N,)
    masks: torch.Tensor | None  # (N, 1, H, W)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return len(self.paths) / self.seconds if self.seconds > 0 else math.inf


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
    #: Overrides the detector's default number of epochs (gradient-trained detectors).
    epochs: int | None = None
    #: Overrides the detector's validation interval in epochs (0: never during training).
    validate_every: int | None = None
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr)

    # -- helpers ---------------------------------------------------------------------------
    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def _loader(self, dataset: AnomalyDataset, shuffle: bool, generator: torch.Generator | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            collate_fn=collate,
        )

    def _bar(self, iterable, description: str, total: int | None = None):
        return tqdm(iterable, desc=description, total=total, disable=not self.progress, leave=False, file=sys.stderr)

    def autocast(self):
        """bf16 autocast (AMX on recent x86 CPUs, tensor cores on GPUs) when asked for."""
        if self.precision == "bf16":
            return torch.autocast(device_type=self.torch_device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- fit ----------------------------------------------------------------------------------
    def fit(
        self,
        detector: AnomalyDetector,
        train: AnomalyDataset,
        val: AnomalyDataset | None = None,
        calibrate: bool = True,
    ) -> dict:
        """Fit the detector, then (unless ``calibrate=False``) calibrate thresholds on ``val``; returns a report.

        ``val`` also serves validation during gradient training (``validate_every``).
        """
        if len(train) == 0:
            raise ValueError(f"{detector.name}: the training dataset is empty: there are no images to fit on")
        generator = seed_everything(self.seed)
        detector.to(self.torch_device)
        spec = detector.training_spec
        started = time.perf_counter()
        history: list[dict] = []
        if spec.kind == TrainingKind.FIT_ONCE:
            self._fit_once(detector, train)
        elif spec.kind == TrainingKind.GRADIENT:
            history = self._fit_gradient(detector, train, val, generator)
        detector.is_fitted.fill_(True)
        report: dict = {"fit_seconds": time.perf_counter() - started, "history": history}
        if calibrate and val is not None and len(val) > 0:
            report["calibration"] = self.calibrate(detector, self.predict(detector, val, description="calibrate"))
        return report

    def calibrate(self, detector: AnomalyDetector, predictions: Predictions) -> dict:
        """Learn thresholds and normalisation from validation predictions; returns a summary."""
        return detector.post_processor.calibrate(
            predictions.scores, predictions.labels, predictions.maps, predictions.masks, self.normal_quantile
        )

    def _fit_once(self, detector: AnomalyDetector, train: AnomalyDataset) -> None:
        detector.eval()
        detector.fit_begin()
        with torch.no_grad(), self.autocast():
            for batch in self._bar(self._loader(train, shuffle=False), f"fit {detector.name}"):
                detector.fit_batch(batch.to(self.torch_device))
        detector.fit_end()

    def _fit_gradient(
        self, detector: AnomalyDetector, train: AnomalyDataset, val: AnomalyDataset | None, generator: torch.Generator
    ) -> list[dict]:
        with detector.caching_frozen_features():
            return self._train(detector, train, val, generator)

    def _train(
        self, detector: AnomalyDetector, train: AnomalyDataset, val: AnomalyDataset | None, generator: torch.Generator
    ) -> list[dict]:
        spec = detector.training_spec
        epochs = self.epochs if self.epochs is not None else spec.epochs
        detector.fit_begin()
        if spec.initial_pass:
            detector.eval()
            with torch.no_grad(), self.autocast():
                for batch in self._bar(self._loader(train, shuffle=False), f"initial pass {detector.name}"):
                    detector.initial_pass_batch(batch.to(self.torch_device))
            detector.initial_pass_end()
        configured = detector.configure_optimizer()
        optimizer, scheduler = configured if isinstance(configured, tuple) else (configured, None)
        history = []
        for epoch in range(1, epochs + 1):
            detector.train()
            epoch_started, losses = time.perf_counter(), []
            bar = self._bar(self._loader(train, shuffle=True, generator=generator), f"epoch {epoch}/{epochs}")
            for step, batch in enumerate(bar):
                with self.autocast():
                    loss = detector.training_step(batch.to(self.torch_device))
                if not torch.isfinite(loss):
                    raise TrainingDivergedError(
                        f"{detector.name}: training loss became {loss.item()} at epoch {epoch}, step {step}; "
                        "lower the learning rate or check the input data"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if spec.gradient_clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(detector.parameters(), spec.gradient_clip_norm)
                optimizer.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if scheduler is not None:
                scheduler.step()
            record = {"epoch": epoch, "loss": sum(losses) / len(losses), "seconds": time.perf_counter() - epoch_started}
            every = self.validate_every if self.validate_every is not None else spec.validate_every
            if every and val is not None and len(val) and epoch % every == 0:
                detector.is_fitted.fill_(True)
                predictions = self.predict(detector, val, description="validate")
                if predictions.labels is not None:
                    record["val_image_auroc"] = image_auroc(predictions.scores, predictions.labels)
            history.append(record)
            self.log(f"epoch {epoch}/{epochs}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
        detector.fit_end()
        return history

    # -- inference ----------------------------------------------------------------------------
    def predict(self, detector: AnomalyDetector, dataset: AnomalyDataset, description: str = "predict") -> Predictions:
        """Raw scores and maps for every image of ``dataset``."""
        detector.check_fitted()
        detector.to(self.torch_device).eval()
        paths, scores, maps, labels, masks = [], [], [], [], []
        started = time.perf_counter()
        with torch.inference_mode(), self.autocast():
            for batch in self._bar(self._loader(dataset, shuffle=False), description):
                batch: Batch
                output = detector(batch.image.to(self.torch_device))
                paths += batch.path
                scores.append(output.pred_score.float().cpu())
                if output.anomaly_map is not None:
                    maps.append(output.anomaly_map.float().cpu())
                if batch.label is not None:
                    labels.append(batch.label)
                if batch.mask is not None:
                    masks.append(batch.mask)
        seconds = time.perf_counter() - started
        return Predictions(
            paths=paths,
            scores=torch.cat(scores),
            maps=torch.cat(maps) if maps else None,
            labels=torch.cat(labels) if len(labels) == len(scores) else None,
            masks=torch.cat(masks) if len(masks) == len(scores) else None,
            seconds=seconds,
        )

    def test(self, detector: AnomalyDetector, dataset: AnomalyDataset) -> tuple[dict[str, float], Predictions]:
        """Metrics over a labelled dataset (pixel metrics when it has masks)."""
        predictions = self.predict(detector, dataset, description="test")
        return self.evaluate(detector, predictions), predictions

    def evaluate(self, detector: AnomalyDetector, predictions: Predictions) -> dict[str, float]:
        """Metrics of existing predictions (lets a caller reuse validation predictions as test ones)."""
        metrics = compute_metrics(predictions.scores, predictions.labels, predictions.maps, predictions.masks)
        metrics["test_images_per_second"] = predictions.images_per_second
        if detector.post_processor.is_calibrated and predictions.labels is not None:
            predicted = predictions.scores >= float(detector.post_processor.image_threshold)
            metrics["image_accuracy_at_threshold"] = float((predicted.long() == predictions.labels).float().mean())
        return metrics
