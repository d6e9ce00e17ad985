"""CFlow on tiny synthetic images: the paper's structure, fiber batches, batch-independent scores, errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import safetensors.torch
import torch
from adcore.batch import Batch
from adcore.config import build_config
from adcore.data import AnomalyDataset, load_data
from adcore.data.synthetic import anomalous_image, make_mvtec, normal_image
from adcore.detector import NotFittedError
from adcore.engine import Engine
from adcore.seed import seed_everything
from adcore_cflow.model import Cflow, CflowConfig

SIZE = 64
TINY = {
    "image_size": SIZE,
    "coupling_blocks": 2,
    "condition_vector": 16,
    "fiber_batch_size": 128,
    "epochs": 4,
    "learning_rate": 2e-3,
}


def _build(seed: int = 0, **overrides) -> Cflow:
    seed_everything(seed)  # the decoders' random permutations and subnet initialisation
    return Cflow(CflowConfig(**{**TINY, **overrides}))


def _images(detector: Cflow, arrays: list[np.ndarray]) -> torch.Tensor:
    return detector.input_spec.normalize(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One detector fitted on 8 synthetic normal images, with its training report."""
    root = make_mvtec(tmp_path_factory.mktemp("cflow") / "category", n_train=8, n_good=2, n_bad=2)
    torch.set_num_threads(1)
    detector = _build()
    train = AnomalyDataset(load_data(f"mvtec:{root}").train, detector.input_spec, cache=True)
    report = Engine(device="cpu", progress=False, batch_size=4, log=lambda message: None).fit(detector, train)
    return detector, report


def test_one_conditional_decoder_per_scale_with_clamped_fc_couplings():
    detector = _build(coupling_blocks=3)
    assert len(detector.decoders) == len(detector.config.layers) == 3
    for decoder, channels in zip(detector.decoders, detector.encoder.channels):
        assert len(decoder.module_list) == 3
        block = decoder.module_list[0]
        assert block.conditional and block.clamp == pytest.approx(1.9)
        first = block.subnet[0]
        # Linear over half the features plus the position code, hidden layer twice as wide.
        assert isinstance(first, torch.nn.Linear)
        assert first.in_features == channels // 2 + 16 and first.out_features == 2 * first.in_features
    assert not any(p.requires_grad for p in detector.encoder.parameters())


def test_the_position_code_changes_the_likelihood_and_the_unconditional_decoder_ignores_it():
    for decoder_kind, should_differ in (("freia-cflow", True), ("freia-flow", False)):
        detector = _build(decoder=decoder_kind)
        for parameter in detector.decoders.parameters():  # FrEIA starts as the identity: perturb
            if parameter.requires_grad:
                torch.nn.init.normal_(parameter, std=0.5)
        vectors = torch.randn(1, detector.encoder.channels[0]).repeat(2, 1)
        with torch.no_grad():  # the same vector at the first and the last of 4x4 positions
            log_likelihood = detector._log_likelihood(0, vectors, torch.tensor([0, 15]), 4, 4)
        assert bool((log_likelihood[0] - log_likelihood[1]).abs() > 1e-3) == should_differ


def test_a_training_step_decodes_a_fiber_batch_of_the_same_fraction_at_every_scale():
    detector = _build(fiber_batch_size=32)
    decoded = []
    hooks = [d.register_forward_hook(lambda m, args, out: decoded.append(args[0].shape[0])) for d in detector.decoders]
    detector.fit_begin()
    images = torch.randn(2, 3, SIZE, SIZE)
    loss = detector.training_step(Batch(images, ["a", "b"]))
    for hook in hooks:
        hook.remove()
    # 64 px: 8x8, 4x4 and 2x2 positions per image; 32 of the 128 finest = a quarter everywhere.
    assert decoded == [32, 8, 2]
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad


def test_training_lowers_the_loss_and_stores_statistics_and_a_reference_per_scale(fitted):
    detector, report = fitted
    losses = [epoch["loss"] for epoch in report["history"]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    # The initial pass measured the channel statistics the decoders standardise with.
    for standardize, channels in zip(detector.standardizers, detector.encoder.channels):
        assert standardize.mean.shape == standardize.std.shape == (channels,)
        assert (standardize.std > 0).all() and not torch.equal(standardize.std, torch.ones(channels))
    reference = detector.reference_log_likelihood
    assert reference.shape == (3,) and torch.isfinite(reference).all() and (reference != 0).all()


def test_scores_are_finite_batch_independent_and_find_a_white_square(fitted):
    detector = fitted[0].eval()
    normal = [normal_image(200 + i, SIZE) for i in range(3)]
    defects = [anomalous_image(i, SIZE)[0] for i in range(3)]
    images = _images(detector, normal + defects)
    with torch.inference_mode():
        together = detector(images)
        alone = detector(images[:1])
    assert together.pred_score.shape == (6,) and together.anomaly_map.shape == (6, 1, SIZE, SIZE)
    assert torch.isfinite(together.anomaly_map).all()
    # The first image's score does not depend on the defective images in its batch.
    torch.testing.assert_close(alone.pred_score, together.pred_score[:1], rtol=1e-5, atol=1e-6)
    assert together.pred_score[3:].min() > together.pred_score[:3].max()


def test_same_seed_same_scores_and_the_safetensors_state_restores_them(fitted, tmp_path):
    detector = fitted[0].eval()
    images = _images(detector, [normal_image(300, SIZE), anomalous_image(7, SIZE)[0]])
    with torch.inference_mode():
        expected = detector(images)
    path = tmp_path / "cflow.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in detector.state_dict().items()}, str(path))
    restored = _build(seed=123)  # another seed: every learned tensor must come from the file
    restored.load_fitted_state(safetensors.torch.load_file(str(path)))
    with torch.inference_mode():
        again = restored.eval()(images)
    assert torch.equal(expected.pred_score, again.pred_score)
    assert torch.equal(expected.anomaly_map, again.anomaly_map)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"condition_vector": 30}, "cflow: condition_vector must be a positive multiple of 4"),
        ({"coupling_blocks": 0}, "cflow: coupling_blocks must be > 0, got 0"),
        ({"affine_clamp": 0.0}, "cflow: affine_clamp must be > 0, got 0.0"),
        ({"fiber_batch_size": 0}, "cflow: fiber_batch_size must be > 0, got 0"),
        ({"learning_rate": -1.0}, "cflow: learning_rate must be > 0, got -1.0"),
        ({"layers": (2, 2)}, "cflow: layers must be distinct"),
        ({"layers": ()}, "cflow: layers must name at least one backbone level"),
        ({"decoder": "glow"}, "cflow: decoder must be one of 'freia-cflow', 'freia-flow', got 'glow'"),
    ],
)
def test_invalid_configs_are_rejected_clearly(overrides, message):
    # Through the core, as command lines and create_detector build it: the core names the detector.
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        Cflow.from_config_dict(overrides)
    assert str(error.value).startswith("cflow: ")


def test_the_old_names_lr_and_clamp_alpha_still_configure_the_detector():
    with pytest.warns(DeprecationWarning, match="learning_rate|affine_clamp"):
        config = build_config(CflowConfig, {"lr": 1e-3, "clamp_alpha": 1.5}, "cflow")
    assert (config.learning_rate, config.affine_clamp) == (1e-3, 1.5)


def test_unfitted_detector_and_bad_images_are_refused():
    detector = _build().eval()
    with pytest.raises(NotFittedError):
        detector.predict(torch.zeros(1, 3, SIZE, SIZE))
    detector.is_fitted.fill_(True)
    with pytest.raises(ValueError, match="3, H, W"):
        detector.predict(torch.zeros(1, 1, SIZE, SIZE))
    images = torch.zeros(1, 3, SIZE, SIZE)
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        detector.predict(images)


def test_the_decoders_stay_in_float32_under_bf16_autocast(fitted):
    detector = fitted[0].eval()
    vectors = torch.randn(10, detector.encoder.channels[1])
    positions = torch.arange(10) % 16
    with torch.inference_mode():
        full = detector._log_likelihood(1, vectors, positions, 4, 4)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            autocast = detector._log_likelihood(1, vectors, positions, 4, 4)
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, full)
