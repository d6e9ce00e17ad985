"""FastFlow on tiny synthetic images: the paper's structure, training, scores, checkpoints, errors."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch
from adcore.batch import Batch
from adcore.data import AnomalyDataset, load_data
from adcore.data.synthetic import anomalous_image, make_mvtec, normal_image
from adcore.detector import NotFittedError
from adcore.engine import Engine
from adcore.seed import seed_everything
from adcore_fastflow.model import Fastflow, FastflowConfig
from torch import nn

SIZE = 64
TINY = {"image_size": SIZE, "layers": (1, 2), "coupling_blocks": 4, "epochs": 3, "learning_rate": 2e-3}


def _build(seed: int = 0, **overrides) -> Fastflow:
    seed_everything(seed)  # the flows' random permutations and subnet initialisation
    return Fastflow(FastflowConfig(**{**TINY, **overrides}))


def _images(detector: Fastflow, arrays: list[np.ndarray]) -> torch.Tensor:
    return detector.input_spec.normalize(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One detector fitted on 8 synthetic normal images, with its training report."""
    root = make_mvtec(tmp_path_factory.mktemp("fastflow") / "category", n_train=8, n_good=2, n_bad=2)
    torch.set_num_threads(1)
    detector = _build()
    train = AnomalyDataset(load_data(f"mvtec:{root}").train, detector.input_spec, cache=True)
    report = Engine(device="cpu", progress=False, batch_size=4, log=lambda message: None).fit(detector, train)
    return detector, report


def test_each_scale_has_a_layernorm_and_a_flow_alternating_3x3_and_1x1():
    detector = _build(coupling_blocks=3)
    features = detector.encoder(torch.zeros(1, 3, SIZE, SIZE))
    assert len(detector.norms) == len(detector.flows) == 2
    for feature, norm, flow in zip(features, detector.norms, detector.flows):
        assert tuple(norm.normalized_shape) == tuple(feature.shape[1:])  # LayerNorm over (C, H, W)
        assert len(flow.module_list) == 3
        kernels = [[c.kernel_size for c in block.subnet if isinstance(c, nn.Conv2d)] for block in flow.module_list]
        assert kernels == [[(3, 3)] * 2, [(1, 1)] * 2, [(3, 3)] * 2]
    only3 = _build(coupling_blocks=2, conv3x3_only=True)
    assert {m.kernel_size for m in only3.flows.modules() if isinstance(m, nn.Conv2d)} == {(3, 3)}
    assert not any(p.requires_grad for p in detector.encoder.parameters())  # the encoder stays frozen


def test_data_init_standardises_each_position_before_the_flows():
    """norm_init="data": after the initial pass, the LayerNorm's output has mean 0 and std 1 per position."""
    detector = _build()
    assert [phase.name for phase in detector.training_spec.phases] == ["initial pass", "train"]
    images = _images(detector, [normal_image(i, SIZE) for i in range(6)])
    detector.fit_begin()
    for start in (0, 3):  # two batches: the statistics are accumulated
        batch = Batch(image=images[start : start + 3], path=[f"image{i}" for i in range(start, start + 3)])
        detector.initial_pass_batch(batch)
    detector.initial_pass_end()
    detector.fit_end()
    with torch.no_grad():
        for feature, norm in zip(detector.encoder(images), detector.norms):
            normalised = norm(feature.float().contiguous())
            assert normalised.mean(dim=0).abs().max() < 1e-3
            std = normalised.std(dim=0, unbiased=False)
            # 1 where the feature varies; below 1 only where the floor (0.1 x the mean std) applies.
            assert std.max() < 1.0 + 1e-3 and (std > 0.999).float().mean() > 0.9


def test_identity_init_is_the_papers_start_and_skips_the_initial_pass():
    detector = _build(norm_init="identity")
    assert [phase.name for phase in detector.training_spec.phases] == ["train"]
    for norm in detector.norms:
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"coupling_blocks": 0}, "coupling_blocks"),
        ({"hidden_ratio": 0.0}, "hidden_ratio"),
        ({"affine_clamp": -1.0}, "affine_clamp"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"weight_decay": -1e-5}, "weight_decay"),
        ({"epochs": 0}, "epochs"),
        ({"layers": ()}, "layers"),
        ({"layers": (2, 2)}, "layers"),
        ({"conv3x3_only": "maybe"}, "true or false"),
        ({"image_size": 16}, "image_size"),
        ({"norm_init": "zeros"}, "norm_init"),
    ],
)
def test_config_rejects_invalid_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        FastflowConfig(**overrides)


def test_input_errors_and_unfitted_detector():
    detector = _build().eval()
    good = torch.zeros(1, 3, SIZE, SIZE)
    with pytest.raises(NotFittedError):
        detector.predict(good)
    with pytest.raises(ValueError, match="shape"):
        detector.predict(torch.zeros(1, 1, SIZE, SIZE))
    with pytest.raises(ValueError, match="NaN"):
        detector.predict(torch.full((1, 3, SIZE, SIZE), float("nan")))
    with pytest.raises(ValueError, match="64"):
        detector.predict(torch.zeros(1, 3, SIZE * 2, SIZE * 2))


def test_training_lowers_the_negative_log_likelihood(fitted):
    _, report = fitted
    losses = [epoch["loss"] for epoch in report["history"]]
    assert len(losses) == 3
    assert losses[-1] < losses[0] - 0.02  # from the data-initialised start (about 1 nat per dimension)


def test_defect_scores_higher_and_is_localised(fitted):
    detector, _ = fitted
    defects = [anomalous_image(i, SIZE) for i in range(3)]
    images = _images(detector, [normal_image(200 + i, SIZE) for i in range(3)] + [image for image, _ in defects])
    with torch.no_grad():
        output = detector.eval()(images)
    assert output.pred_score.shape == (6,) and output.anomaly_map.shape == (6, 1, SIZE, SIZE)
    assert output.pred_score.dtype == torch.float32 and torch.isfinite(output.anomaly_map).all()
    # Minus a likelihood in [0, 1]: the map lives in [-1, 0].
    assert output.anomaly_map.max() <= 0 and output.anomaly_map.min() >= -1
    assert output.pred_score[3:].min() > output.pred_score[:3].max()
    for row, (_, mask) in enumerate(defects, start=3):
        inside = torch.from_numpy(mask > 0)
        anomaly_map = output.anomaly_map[row, 0]
        assert anomaly_map[inside].mean() > anomaly_map[~inside].mean()


def test_same_seed_same_scores_and_the_seed_matters(fitted, tmp_path):
    detector, _ = fitted
    root = make_mvtec(tmp_path / "category", n_train=4, n_good=1, n_bad=1)
    images = _images(detector, [normal_image(300, SIZE), anomalous_image(7, SIZE)[0]])

    def fit_and_score(seed: int) -> torch.Tensor:
        model = _build(seed=seed, epochs=1)
        train = AnomalyDataset(load_data(f"mvtec:{root}").train, model.input_spec)
        Engine(device="cpu", seed=seed, progress=False, batch_size=2, log=lambda m: None).fit(model, train)
        with torch.no_grad():
            return model.eval()(images).pred_score

    first = fit_and_score(0)
    assert torch.equal(first, fit_and_score(0))
    assert not torch.equal(first, fit_and_score(1))


def test_safetensors_round_trip_gives_identical_scores(fitted, tmp_path):
    detector, _ = fitted
    images = _images(detector, [normal_image(400, SIZE), anomalous_image(9, SIZE)[0]])
    path = tmp_path / "fastflow.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in detector.state_dict().items()}, str(path))
    fresh = _build(seed=5)  # other random permutations and weights: everything must come from the file
    fresh.load_fitted_state(safetensors.torch.load_file(str(path)))
    with torch.no_grad():
        expected, restored = detector.eval()(images), fresh.eval()(images)
    assert torch.equal(expected.pred_score, restored.pred_score)
    assert torch.equal(expected.anomaly_map, restored.anomaly_map)


def test_negative_blur_sigma_is_refused():
    from adcore.plugins import create_detector

    with pytest.raises(ValueError, match="^fastflow: .*blur_sigma"):
        create_detector("fastflow", image_size=64, blur_sigma=-1.0)


def test_errors_through_the_core_name_the_detector_once():
    from adcore.plugins import create_detector

    with pytest.raises(ValueError, match=r"^fastflow: image_size must be at least 32 pixels per side"):
        create_detector("fastflow", image_size=16)
    with pytest.raises(ValueError, match=r"^fastflow: layers must be distinct"):
        create_detector("fastflow", image_size=64, layers=(2, 2))


def test_old_parameter_names_are_aliases():
    from adcore.plugins import create_detector

    with pytest.warns(DeprecationWarning) as warned:
        detector = create_detector("fastflow", image_size=64, layers=(1, 2), flow_steps=2, lr=1e-3)
    messages = " ".join(str(w.message) for w in warned)
    assert "'coupling_blocks'" in messages and "'learning_rate'" in messages
    assert detector.config.coupling_blocks == 2 and detector.config.learning_rate == 1e-3
