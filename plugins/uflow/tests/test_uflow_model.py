"""U-Flow: the U-shaped flow is invertible with the right log-determinant, the a-contrario
test keeps its false-alarm promise on normal latents and finds planted anomalies, and the
detector fits, scores, reloads and validates its input on tiny synthetic data."""

import math

import numpy as np
import pytest
import safetensors.torch
import torch
from adcore.data import AnomalyDataset, load_data
from adcore.data.synthetic import make_mvtec
from adcore.detector import NotFittedError
from adcore.engine import Engine
from adcore.plugins import create_detector
from adcore.seed import seed_everything
from adcore_uflow.flow import UShapedFlow
from adcore_uflow.nfa import binomial_log10_tail, chi2_1_quantile, log_nfa_map, scale_log10_probability, window_size_at
from scipy import stats

TINY = {"image_size": 64, "epochs": 2}


# -- the U-shaped flow --------------------------------------------------------------------------


def test_flow_splits_half_per_scale_and_is_invertible():
    torch.manual_seed(0)
    flow = UShapedFlow([8, 16, 32], [(8, 8), (4, 4), (2, 2)], coupling_blocks=2)
    # Coarsest: 32 channels, 16 go up (4 after upsampling), 16 stay; middle: 16 + 4 = 20, 8 up, 12 stay.
    assert flow.latent_channels == [8 + 2, 12, 16]
    features = [torch.randn(3, 8, 8, 8), torch.randn(3, 16, 4, 4), torch.randn(3, 32, 2, 2)]
    latents, log_jac_det = flow(features)
    assert [tuple(z.shape) for z in latents] == [(3, 10, 8, 8), (3, 12, 4, 4), (3, 16, 2, 2)]
    assert log_jac_det.shape == (3,)
    with torch.no_grad():
        restored = flow.reverse(latents)
    for original, back in zip(features, restored):
        torch.testing.assert_close(back, original, atol=1e-4, rtol=1e-4)


def test_flow_log_det_is_the_log_det_of_the_whole_map():
    """The U-shape adds no volume change of its own: compare with the exact Jacobian."""
    torch.manual_seed(1)
    flow = UShapedFlow([4, 8], [(2, 2), (1, 1)], coupling_blocks=2).double()
    fine, coarse = torch.randn(1, 4, 2, 2, dtype=torch.float64), torch.randn(1, 8, 1, 1, dtype=torch.float64)

    def whole(flat):
        latents, _ = flow([flat[:16].view(1, 4, 2, 2), flat[16:].view(1, 8, 1, 1)])
        return torch.cat([z.flatten() for z in latents])

    flat = torch.cat([fine.flatten(), coarse.flatten()])
    jacobian = torch.autograd.functional.jacobian(whole, flat)
    _, log_jac_det = flow([fine, coarse])
    assert jacobian.shape == (24, 24)
    assert log_jac_det.item() == pytest.approx(torch.linalg.slogdet(jacobian)[1].item(), abs=1e-6)
    assert abs(log_jac_det.item()) > 1e-3  # not trivially zero


def test_flow_rejects_scales_that_do_not_halve():
    with pytest.raises(ValueError, match="factor 2"):
        UShapedFlow([8, 16], [(8, 8), (2, 2)])


# -- the a-contrario test ---------------------------------------------------------------------


def test_chi2_quantile_and_binomial_tail_match_scipy():
    for q in (0.5, 0.9, 0.99):
        assert chi2_1_quantile(q) == pytest.approx(stats.chi2.ppf(q, 1), rel=1e-9)
    table = binomial_log10_tail(300, 0.1)
    k = np.array([0, 10, 30, 60, 120, 300])
    expected = stats.binom.logsf(k - 1, 300, 0.1) / math.log(10)
    np.testing.assert_allclose(table[k].numpy(), expected, rtol=1e-6, atol=1e-9)
    assert window_size_at(0, 7) == 7 and window_size_at(1, 7) == 3 and window_size_at(2, 7) == 3


def test_nfa_keeps_fewer_than_one_false_alarm_per_normal_image():
    generator = torch.Generator().manual_seed(0)
    latents = [torch.randn(40, 10, 16, 16, generator=generator), torch.randn(40, 20, 8, 8, generator=generator)]
    tests = sum(z.shape[-2] * z.shape[-1] for z in latents)
    false_alarms = sum(
        ((scale_log10_probability(z, window_size_at(s, 7), 0.5) + math.log10(tests)) < 0).sum().item()
        for s, z in enumerate(latents)
    )
    assert false_alarms / 40 <= 1.0  # the NFA's promise: at most one expected false alarm per image
    assert (log_nfa_map(latents, (64, 64)).flatten(1).amax(dim=1) > 0).float().mean() < 0.3


def test_nfa_detects_a_planted_anomaly_where_it_is():
    generator = torch.Generator().manual_seed(1)
    fine, coarse = torch.randn(1, 10, 16, 16, generator=generator), torch.randn(1, 20, 8, 8, generator=generator)
    fine[..., 3:9, 9:15] *= 6.0  # latents six times too spread out in one region
    nfa = log_nfa_map([fine, coarse], (64, 64))
    assert nfa.shape == (1, 1, 64, 64)
    assert nfa[0, 0, 16:30, 44:58].min() > 0
    assert nfa[0, 0, 48:, :24].max() < 0


def test_nfa_is_not_fooled_by_channels_that_move_together():
    """Channels of a position count as one observation: fully dependent channels raise no false alarms.

    Counting every channel as an independent trial instead turns chance clusters of large
    latents into detections in almost every image.
    """
    generator = torch.Generator().manual_seed(2)
    shared = torch.randn(40, 1, 16, 16, generator=generator)
    latent = shared.expand(-1, 10, -1, -1) + 0.01 * torch.randn(40, 10, 16, 16, generator=generator)
    assert (log_nfa_map([latent], (64, 64)).flatten(1).amax(dim=1) > 0).float().mean() < 0.3
    # The per-channel count (n = channels x window), on the interior 7x7 windows:
    candidates = (latent.square() > chi2_1_quantile(0.5)).float().sum(dim=1, keepdim=True)
    counts = (torch.nn.functional.avg_pool2d(candidates, 7, stride=1) * 49).round().long()
    log_nfa = binomial_log10_tail(10 * 49, 0.5)[counts] + math.log10(16 * 16)
    assert (log_nfa.flatten(1).amin(dim=1) < 0).float().mean() > 0.8


# -- the detector -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = make_mvtec(tmp_path_factory.mktemp("uflow") / "toy", n_train=8, n_good=4, n_bad=4)
    splits = load_data(f"mvtec:{root}")
    detector = create_detector("uflow", seed=0, **TINY)
    engine = Engine(progress=False, batch_size=4, log=lambda message: None)
    report = engine.fit(detector, AnomalyDataset(splits.train, detector.input_spec, cache=True), calibrate=False)
    test = AnomalyDataset(splits.test, detector.input_spec, has_masks=True)
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    labels = torch.tensor([test[i]["label"] for i in range(len(test))])
    return detector, report, images, labels


def test_fit_learns_and_an_obvious_defect_scores_above_normal_images(fitted):
    detector, report, images, labels = fitted
    losses = [epoch["loss"] for epoch in report["history"]]
    assert len(losses) == 2 and losses[-1] < losses[0]
    with torch.no_grad():
        output = detector(images)
    assert output.pred_score.shape == (8,) and output.pred_score.dtype == torch.float32
    assert output.anomaly_map.shape == (8, 1, 64, 64)
    assert torch.isfinite(output.anomaly_map).all()
    assert output.pred_score[labels == 1].min() > output.pred_score[labels == 0].max()


def test_nfa_map_type_scores_with_minus_log_nfa(fitted):
    detector, _, images, labels = fitted
    nfa_detector = create_detector("uflow", seed=0, map_type="nfa", **TINY)
    nfa_detector.load_fitted_state(detector.state_dict())
    with torch.no_grad():
        output = nfa_detector(images)
        nfa = detector.nfa_map(images)
        decision = detector.nfa_decision(images)
    torch.testing.assert_close(output.anomaly_map, nfa)
    assert torch.equal(decision, output.pred_score > 0)
    assert output.pred_score[labels == 1].mean() > output.pred_score[labels == 0].mean()


def test_safetensors_round_trip_gives_identical_scores(fitted, tmp_path):
    detector, _, images, _ = fitted
    path = tmp_path / "uflow.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in detector.state_dict().items()}, str(path))
    fresh = create_detector("uflow", seed=123, **TINY)  # another seed: everything must come from the file
    with pytest.raises(NotFittedError):
        fresh.predict(images)
    with pytest.raises(NotFittedError):
        fresh.nfa_map(images)
    fresh.load_fitted_state(safetensors.torch.load_file(str(path)))
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(images).pred_score, detector(images).pred_score)


def test_standardization_is_measured_on_the_training_features(fitted):
    detector = fitted[0]
    assert [phase.name for phase in detector.training_spec.phases] == ["initial pass", "train"]
    for standardize, channels in zip(detector.standardizers, detector.encoder.channels):
        assert standardize.mean.shape[0] == channels and standardize.mean.dim() == 3
        assert standardize.mean.abs().max() > 0.01 and not torch.equal(
            standardize.std, torch.ones_like(standardize.std)
        )
    plain = create_detector("uflow", seed=0, standardize=False, **TINY)
    assert [phase.name for phase in plain.training_spec.phases] == ["train"]
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # without the initial pass the standardisation is the identity
        for raw, standardized in zip(plain.layer_normalized(images), plain.features(images)):
            torch.testing.assert_close(raw, standardized)


def test_same_seed_builds_the_same_flow():
    """Weights and the couplings' random channel permutations both follow the seed."""
    flows = []
    for seed in (7, 7, 8):
        seed_everything(seed)
        flows.append(UShapedFlow([8, 16], [(4, 4), (2, 2)], coupling_blocks=2).state_dict())
    assert all(torch.equal(flows[0][k], flows[1][k]) for k in flows[0])
    assert not all(torch.equal(flows[0][k], flows[2][k]) for k in flows[0])


def test_rejects_bad_input_and_bad_config(fitted):
    detector = fitted[0]
    with pytest.raises(ValueError, match="shape"):
        detector.predict(torch.zeros(1, 1, 64, 64))
    nan = torch.zeros(1, 3, 64, 64)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        detector.predict(nan)
    with pytest.raises(ValueError, match="NaN"):
        detector.nfa_map(nan)
    for bad, message in (
        ({"map_type": "heat"}, "map_type"),
        ({"nfa_window_size": 4}, "nfa_window_size must be odd"),
        ({"nfa_probability_threshold": 1.5}, "nfa_probability_threshold"),
        ({"nfa_probability_threshold": 1.0}, "nfa_probability_threshold"),
        ({"lr_end_factor": 1.5}, "lr_end_factor"),
        ({"coupling_blocks": 0}, "coupling_blocks"),
        ({"layers": (3, 2)}, "layers must be ordered finest first"),
        ({"layers": (2, 2)}, "layers must be distinct"),
        ({"standardize": "maybe"}, "true or false"),
    ):
        with pytest.raises(ValueError, match=f"^uflow: .*{message}"):
            create_detector("uflow", image_size=64, **bad)
    with pytest.raises(ValueError, match="^uflow: the layers' strides must double"):
        create_detector("uflow", image_size=64, layers=(1, 3))
    with pytest.raises(ValueError, match="^uflow: image_size .* divisible"):
        create_detector("uflow", image_size=72)


def test_old_parameter_name_is_an_alias():
    with pytest.warns(DeprecationWarning, match="'flow_steps' is now called 'coupling_blocks'"):
        detector = create_detector("uflow", seed=0, flow_steps=2, **TINY)
    assert detector.config.coupling_blocks == 2
    assert all(len(stage.module_list) == 2 for stage in detector.flow.stages)
