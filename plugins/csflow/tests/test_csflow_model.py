"""CS-Flow on tiny synthetic inputs: the cross-scale coupling, training, scores, checkpoints, errors."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch
from adcore.data import AnomalyDataset, load_data
from adcore.data.synthetic import anomalous_image, make_mvtec, normal_image
from adcore.detector import NotFittedError
from adcore.engine import Engine
from adcore.seed import seed_everything
from adcore_csflow.model import AnomalyMapMode, CsFlow, CsFlowConfig
from adcore_csflow.cross_scale import CrossScaleCoupling, cross_scale_flow

SIZE = 64
TINY = {
    "image_size": SIZE,
    "cross_conv_hidden_channels": 16,
    "coupling_blocks": 2,
    "epochs": 3,
    "learning_rate": 1e-3,
}


def _build(seed: int = 0, **overrides) -> CsFlow:
    seed_everything(seed)  # permutations (NumPy) and subnet initialisation (torch)
    return CsFlow(CsFlowConfig(**{**TINY, **overrides}))


def _images(detector: CsFlow, arrays: list[np.ndarray]) -> torch.Tensor:
    return detector.input_spec.normalize(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))


def _randomise_gains(module: torch.nn.Module) -> None:
    """The subnets' output gains start at zero (identity couplings); make them act."""
    for name, parameter in module.named_parameters():
        if name.endswith("gamma"):
            parameter.data.uniform_(0.5, 1.5)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One detector fitted on 8 synthetic normal images, with its training report."""
    root = make_mvtec(tmp_path_factory.mktemp("csflow") / "category", n_train=8, n_good=2, n_bad=2)
    torch.set_num_threads(1)
    detector = _build()
    train = AnomalyDataset(load_data(f"mvtec:{root}").train, detector.input_spec, cache=True)
    report = Engine(device="cpu", progress=False, batch_size=4, log=lambda message: None).fit(detector, train)
    return detector, report


def test_coupling_is_invertible_and_its_log_det_is_exact():
    torch.manual_seed(0)
    dims = [(4, 4, 4), (4, 2, 2), (4, 1, 1)]
    coupling = CrossScaleCoupling(dims, hidden_channels=8, kernel_size=3, affine_clamp=3.0).double()
    _randomise_gains(coupling)
    x = [torch.randn(1, *d, dtype=torch.float64) for d in dims]
    y, log_det = coupling(x)
    back, log_det_rev = coupling(y, rev=True)
    for a, b in zip(x, back):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(log_det, -log_det_rev)

    def flat(v: torch.Tensor) -> torch.Tensor:
        parts, start = [], 0
        for d in dims:
            size = int(np.prod(d))
            parts.append(v[start : start + size].view(1, *d))
            start += size
        return torch.cat([t.flatten() for t in coupling(parts)[0]])

    jacobian = torch.autograd.functional.jacobian(flat, torch.cat([t.flatten() for t in x]))
    torch.testing.assert_close(log_det[0], torch.linalg.slogdet(jacobian)[1])


def test_scales_exchange_information_in_the_coupling():
    torch.manual_seed(0)
    dims = [(4, 8, 8), (4, 4, 4), (4, 2, 2)]
    coupling = CrossScaleCoupling(dims, hidden_channels=8)
    _randomise_gains(coupling)
    x = [torch.randn(2, *d) for d in dims]
    changed = [x[0], x[1], x[2] + 1.0]  # only the coarsest scale differs
    before, after = coupling(x)[0], coupling(changed)[0]
    assert not torch.allclose(before[0], after[0])  # ... and the finest scale's output moves


def test_new_flow_is_a_permutation_and_log_scales_stay_within_the_clamp():
    torch.manual_seed(0)
    dims = [(6, 8, 8), (6, 4, 4), (6, 2, 2)]
    flow = cross_scale_flow(dims, coupling_blocks=3, hidden_channels=8, affine_clamp=0.5, kernel_sizes=[3, 3, 5])
    x = [torch.randn(2, *d) for d in dims]
    z, log_det = flow(x)
    assert torch.equal(log_det, torch.zeros(2))  # zero gains: every coupling starts as the identity
    for a, b in zip(x, z):
        torch.testing.assert_close(a.sort(dim=1).values, b.sort(dim=1).values)  # channels only permuted
    _randomise_gains(flow)
    for m in flow.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.weight.data.mul_(100)  # huge raw scales
    _, log_det = flow([t * 10 for t in x])
    dims_total = sum(int(np.prod(d)) for d in dims)
    assert log_det.abs().max() < 3 * 0.5 * dims_total  # |log s| < affine_clamp per dimension and block


def test_features_come_from_one_layer_at_three_image_scales():
    detector = _build()
    features = detector.multi_scale_features(torch.zeros(2, 3, 128, 128))
    assert [tuple(f.shape) for f in features] == [(2, 112, 8, 8), (2, 112, 4, 4), (2, 112, 2, 2)]
    kernels = [coupling.subnet1.inner[0].kernel_size for coupling in _couplings(detector)]
    assert kernels == [(3, 3), (5, 5)]  # the last coupling widens its receptive field


def _couplings(detector: CsFlow) -> list[CrossScaleCoupling]:
    return [m for m in detector.flow.modules() if isinstance(m, CrossScaleCoupling)]


def test_training_lowers_the_loss_and_outputs_are_finite_at_input_size(fitted):
    detector, report = fitted
    losses = [epoch["loss"] for epoch in report["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    images = _images(detector, [normal_image(100), normal_image(101), anomalous_image(102)[0]])
    with torch.no_grad():
        output = detector(images)
    assert output.pred_score.shape == (3,) and output.pred_score.dtype == torch.float32
    assert output.anomaly_map.shape == (3, 1, SIZE, SIZE)
    assert torch.isfinite(output.pred_score).all() and torch.isfinite(output.anomaly_map).all()


def test_obvious_defect_scores_above_normal_images(fitted):
    detector, _ = fitted
    normal = _images(detector, [normal_image(s) for s in (200, 201, 202)])
    defect, mask = anomalous_image(203, patch=20)
    with torch.no_grad():
        normal_scores = detector(normal).pred_score
        output = detector(_images(detector, [defect]))
    assert output.pred_score[0] > normal_scores.max()
    inside = output.anomaly_map[0, 0][torch.from_numpy(mask > 0)].mean()
    outside = output.anomaly_map[0, 0][torch.from_numpy(mask == 0)].mean()
    assert inside > outside


def test_map_modes_all_multiplies_scales_and_max_uses_the_largest(fitted):
    detector, _ = fitted
    torch.manual_seed(0)
    z = [torch.rand(1, 4, 4, 4) + 0.5, torch.rand(1, 4, 2, 2) + 0.5, torch.full((1, 4, 1, 1), 2.0)]
    detector.config.anomaly_map_mode = AnomalyMapMode.MAX
    largest = detector.anomaly_map(z, (8, 8))
    detector.config.anomaly_map_mode = AnomalyMapMode.ALL
    combined = detector.anomaly_map(z, (8, 8))
    assert largest.shape == combined.shape == (1, 1, 8, 8)
    torch.testing.assert_close(
        largest, torch.nn.functional.interpolate(z[0].square().mean(1, keepdim=True), size=(8, 8), mode="bilinear")
    )
    assert not torch.allclose(largest, combined)
    assert CsFlowConfig(anomaly_map_mode="max").anomaly_map_mode is AnomalyMapMode.MAX


def test_same_seed_same_scores_and_checkpoint_round_trip(fitted, tmp_path):
    detector, _ = fitted
    images = _images(detector, [normal_image(300), anomalous_image(301)[0]])
    with torch.no_grad():
        expected = detector(images).pred_score
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in detector.state_dict().items()}, str(path))
    fresh = _build(seed=123)  # other random permutations and weights: all must come from the file
    fresh.load_fitted_state(safetensors.torch.load_file(str(path)))
    with torch.no_grad():
        torch.testing.assert_close(fresh(images).pred_score, expected, rtol=0, atol=0)

    root = make_mvtec(tmp_path / "again", n_train=8, n_good=1, n_bad=1)
    again = _build()
    train = AnomalyDataset(load_data(f"mvtec:{root}").train, again.input_spec, cache=True)
    Engine(device="cpu", progress=False, batch_size=4, log=lambda message: None).fit(again, train)
    with torch.no_grad():
        torch.testing.assert_close(again(images).pred_score, expected, rtol=0, atol=0)


def test_rejects_bad_input_and_unfitted_use():
    detector = _build()
    with pytest.raises(NotFittedError):
        detector.predict(torch.zeros(1, 3, SIZE, SIZE))
    detector.is_fitted.fill_(True)
    with pytest.raises(ValueError, match="shape"):
        detector.predict(torch.zeros(1, 1, SIZE, SIZE))
    with pytest.raises(ValueError, match="NaN"):
        detector.predict(torch.full((1, 3, SIZE, SIZE), float("nan")))


@pytest.mark.parametrize(
    "bad",
    [
        {"cross_conv_hidden_channels": 0},
        {"coupling_blocks": 0},
        {"affine_clamp": 0},
        {"learning_rate": -1},
        {"eps": 0},
        {"weight_decay": -1e-5},
        {"gradient_clip_norm": 0},
        {"epochs": 0},
        {"image_size": 16},
        {"anomaly_map_mode": "mean"},
    ],
)
def test_config_rejects_invalid_values(bad):
    with pytest.raises(ValueError):
        CsFlowConfig(**bad)


def test_errors_through_the_core_name_the_detector_once_and_old_names_are_aliases():
    from adcore.plugins import create_detector

    with pytest.raises(ValueError, match=r"^csflow: image_size must be at least 32 px per side"):
        create_detector("csflow", image_size=16)
    with pytest.warns(DeprecationWarning) as warned:
        detector = create_detector(
            "csflow", image_size=SIZE, cross_conv_hidden_channels=8, n_coupling_blocks=2, clamp=1.5, lr=1e-3
        )
    messages = " ".join(str(w.message) for w in warned)
    assert all(f"'{name}'" in messages for name in ("coupling_blocks", "affine_clamp", "learning_rate"))
    cfg = detector.config
    assert (cfg.coupling_blocks, cfg.affine_clamp, cfg.learning_rate) == (2, 1.5, 1e-3)
    assert {c.affine_clamp for c in _couplings(detector)} == {1.5}
