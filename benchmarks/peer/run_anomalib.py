"""One cell of the benchmark suite run by the peer, anomalib 2.7.0, inside anomalib's own venv.

``benchmarks/bench_suite.py`` starts this file with the peer venv's python and one argument,
a JSON file holding the cell's spec (written by the suite; this file imports nothing from
adcore, which is not installed here):

* ``model``: an anomalib model class name (``Padim``, ``Stfpm``, ...) and ``params`` for it
  (backbone ``tf_efficientnet_lite0``, the same feature indices as adcore's defaults);
* ``image_size`` (height, width: adcore's default input size on this category), ``epochs`` (None: the model's own trainer arguments), ``seed``;
* ``train`` / ``test``: the image records adcore itself loads for the category
  (path, label, mask path), so both frameworks see exactly the same images;
* ``weights``: a safetensors file of ImageNet ``tf_efficientnet_lite0`` weights, written by
  the suite from adcore's offline weights provider.

anomalib asks timm for pretrained weights from the Hugging Face hub, which this machine
cannot reach. ``timm.create_model`` is wrapped so that a pretrained ``tf_efficientnet_lite0``
loads from ``weights`` (``pretrained_cfg_overlay=dict(file=...)``), and after the model is
built every backbone created with ``pretrained=True`` is compared tensor by tensor with that
file: the cell fails loudly if one does not hold the ImageNet weights, or if none was built.

Prints one JSON line (the last line of stdout): image AUROC, pixel AUROC, AUPRO (where the
data has masks and the model makes maps), fit seconds, test images/s (anomalib's whole ``engine.test``:
loading, scoring, post-processing and its metrics, where adcore's figure counts its predict loop
only, so the peer's is pessimistic by the metric time), peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time


def patch_timm(architecture: str, weights_file: str) -> list:
    """Make timm load ``architecture``'s pretrained weights from ``weights_file``; return the
    list that collects every model built with ``pretrained=True`` (checked later)."""
    import timm

    built: list = []
    original = timm.create_model

    def create_model(model_name, pretrained=False, *args, **kwargs):
        if pretrained:
            if model_name.split(".")[0] != architecture:
                raise RuntimeError(f"anomalib asked for pretrained {model_name!r}: no offline weights for it")
            kwargs["pretrained_cfg_overlay"] = {
                **kwargs.get("pretrained_cfg_overlay", {}),
                "file": weights_file,
                "source": "",
            }
        model = original(model_name, pretrained, *args, **kwargs)
        if pretrained:
            built.append(model)
        return model

    timm.create_model = create_model
    return built


def check_backbones(built: list, weights_file: str) -> int:
    """Every pretrained backbone anomalib built holds the file's weights (or raise); returns how many."""
    import torch
    from safetensors.torch import load_file

    if not built:
        raise RuntimeError("anomalib built no pretrained timm backbone: the weights were not used")
    reference = load_file(weights_file)
    for model in built:
        state = model.state_dict()
        # features_only models drop the head; every remaining tensor must be the file's.
        shared = [k for k in state if k in reference]
        if len(shared) < 0.9 * len(state):
            raise RuntimeError(f"backbone keys do not match the weights file ({len(shared)} of {len(state)})")
        for key in shared:
            if not torch.equal(state[key].detach().cpu().float(), reference[key].float()):
                raise RuntimeError(f"backbone tensor {key} differs from the ImageNet weights file")
    return len(built)


def build_datamodule(spec: dict):
    import pandas as pd
    from anomalib.data.datamodules.base.image import AnomalibDataModule
    from anomalib.data.datasets.base.image import AnomalibDataset

    has_masks = spec["has_masks"]

    class RecordsDataset(AnomalibDataset):
        """The images adcore loads for the category, as an anomalib dataset."""

        def __init__(self, records: list[dict], split: str) -> None:
            super().__init__()
            frame = pd.DataFrame(
                {
                    "image_path": [r["path"] for r in records],
                    "split": split,
                    "label_index": [int(r["label"] or 0) for r in records],
                    "mask_path": [r["mask"] or "" for r in records],
                }
            )
            frame.attrs["task"] = "segmentation" if has_masks else "classification"
            self.samples = frame

    class RecordsDataModule(AnomalibDataModule):
        def __init__(self) -> None:
            # anomalib's defaults (batch 32, validation = the test set), except no worker processes:
            # the peak RSS is then the run's own.
            # test_split_mode "from_dir" keeps the normal test images (the base class's default drops them).
            super().__init__(
                train_batch_size=32,
                eval_batch_size=32,
                num_workers=0,
                test_split_mode="from_dir",
                val_split_mode="same_as_test",
                seed=spec["seed"],
            )

        @property
        def name(self) -> str:
            return spec["category"]

        def _setup(self, _stage: str | None = None) -> None:
            self.train_data = RecordsDataset(spec["train"], "train")
            self.test_data = RecordsDataset(spec["test"], "test")

    return RecordsDataModule()


def run(spec: dict) -> dict:
    import anomalib
    import anomalib.models
    import torch
    from anomalib.engine import Engine
    from anomalib.metrics import AUPRO, AUROC, Evaluator
    from lightning.pytorch import seed_everything

    built = patch_timm(spec["backbone"], spec["weights"])
    seed_everything(spec["seed"], workers=True)
    model_class = getattr(anomalib.models, spec["model"])
    size = spec["image_size"]
    metrics = [AUROC(fields=["pred_score", "gt_label"], prefix="image_")]
    if spec["has_masks"] and spec["maps"]:
        metrics += [
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, fpr_limit=0.3),
        ]
    model = model_class(
        **spec["params"],
        pre_processor=model_class.configure_pre_processor(image_size=tuple(size)),
        evaluator=Evaluator(test_metrics=metrics),
        visualizer=False,
    )
    backbones = check_backbones(built, spec["weights"]) if spec["backbone"] else 0
    datamodule = build_datamodule(spec)
    trainer_args = {"max_epochs": spec["epochs"]} if spec["epochs"] else {}
    with tempfile.TemporaryDirectory() as root:
        engine = Engine(
            accelerator="cpu",
            devices=1,
            logger=False,
            default_root_dir=root,
            enable_progress_bar=False,
            **trainer_args,
        )
        started = time.perf_counter()
        engine.fit(model=model, datamodule=datamodule)
        fit_seconds = time.perf_counter() - started
        tested = datamodule.test_data.samples.label_index.value_counts().to_dict()
        expected = {label: sum(int(r["label"] or 0) == label for r in spec["test"]) for label in (0, 1)}
        if {label: tested.get(label, 0) for label in (0, 1)} != expected:
            raise RuntimeError(f"anomalib's test set {tested} is not the category's {expected}")
        started = time.perf_counter()
        results = engine.test(model=model, datamodule=datamodule, ckpt_path=None, verbose=False)
        test_seconds = time.perf_counter() - started
    if spec["backbone"]:
        check_backbones(built, spec["weights"])  # still the ImageNet weights after fitting (frozen encoders)
    result = results[0]
    return {
        "image_auroc": result.get("image_AUROC"),
        "pixel_auroc": result.get("pixel_AUROC"),
        "pixel_aupro": result.get("pixel_AUPRO"),
        "fit_s": fit_seconds,
        "test_img_s": len(spec["test"]) / test_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "epochs": engine.trainer.current_epoch or None,
        "backbones_checked": backbones,
        "anomalib": anomalib.__version__,
    }


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network
    with open(sys.argv[1]) as handle:
        cell = json.load(handle)
    print(json.dumps(run(cell)))
