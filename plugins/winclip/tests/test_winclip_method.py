"""WinCLIP's pieces, each against a case that can be checked by hand, through the real loading
path (a tiny open_clip model saved to a file and loaded as ``clip_model=JSON``, ``weights=FILE``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import open_clip
import pytest
import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F
from adcore import Batch, ResourceNotFoundError, hookimpl
from adcore.checkpoint import read_metadata, save_checkpoint
from adcore.plugins import PluginRegistry, create_detector, set_registry
from adcore_winclip import clip_loading
from adcore_winclip.model import (
    TEMPERATURE,
    anomaly_probability,
    harmonic_aggregation,
    window_token_indices,
)
from adcore_winclip.prompts import ANOMALOUS_STATES, NORMAL_STATES, TEMPLATES, prompt_ensemble
from adcore_winclip.testing import TINY_CONFIG, textures, write_tiny_clip


@pytest.fixture(scope="module")
def detector(random_clip):
    return create_detector("winclip", **random_clip.params(class_name="bottle")).eval()


# -- windows: which tokens each window keeps ---------------------------------------------------------
def test_window_indices_of_a_3x4_grid_by_hand():
    # Patches numbered row-major:  0 1 2 3 / 4 5 6 7 / 8 9 10 11
    assert window_token_indices((3, 4), 2).tolist() == [
        [0, 1, 4, 5], [1, 2, 5, 6], [2, 3, 6, 7],
        [4, 5, 8, 9], [5, 6, 9, 10], [6, 7, 10, 11],
    ]  # fmt: skip
    assert window_token_indices((3, 4), 3).tolist() == [[0, 1, 2, 4, 5, 6, 8, 9, 10], [1, 2, 3, 5, 6, 7, 9, 10, 11]]
    with pytest.raises(ValueError, match="does not fit"):
        window_token_indices((3, 4), 4)


@pytest.mark.parametrize("size", [2, 3])
def test_window_masks_of_the_real_grid_cover_exactly_each_square(size):
    windows = window_token_indices((15, 15), size)
    assert windows.shape == ((16 - size) ** 2, size * size)
    for window in windows.tolist():
        rows, cols = {i // 15 for i in window}, {i % 15 for i in window}
        assert len(rows) == len(cols) == size and len(set(window)) == size * size
        assert set(window) == {r * 15 + c for r in rows for c in cols}  # a full square, nothing else
        assert max(rows) - min(rows) == max(cols) - min(cols) == size - 1
    counts = torch.bincount(windows.flatten(), minlength=225).view(15, 15)
    assert counts[7, 7] == size * size and counts[0, 0] == 1  # stride 1: interior patches in k*k windows


def test_a_window_sees_only_its_own_patches(detector):
    """Masking: pixels outside a window do not change its embedding, pixels inside do."""
    images = torch.randn(1, 3, 240, 240, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, _, before = detector.embed(images)
        outside = images.clone()
        outside[..., 48:, :] = torch.randn(1, 3, 192, 240)  # patch rows 3.. change; window 0 (rows 0-1) does not
        _, _, after_outside = detector.embed(outside)
        inside = images.clone()
        inside[..., 16:32, 16:32] += 1.0  # patch (1, 1): inside window 0 of both scales
        _, _, after_inside = detector.embed(inside)
    for scale in (2, 3):
        assert torch.allclose(after_outside[scale][0, 0], before[scale][0, 0], atol=1e-6)
        assert not torch.allclose(after_inside[scale][0, 0], before[scale][0, 0], atol=1e-3)
    # The window two rows further down (top-left patch (3, 0)) sees the changed rows.
    lower = 3 * (15 - 2 + 1)
    assert not torch.allclose(after_outside[2][0, lower], before[2][0, lower], atol=1e-3)


def test_image_embedding_is_open_clips_and_a_whole_grid_window_equals_it(random_clip):
    detector = create_detector("winclip", **random_clip.params(scales=[15, 2])).eval()
    images = torch.randn(2, 3, 240, 240, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        image, patches, windows = detector.embed(images)
        reference = F.normalize(detector.clip.encode_image(images), dim=-1)
    assert torch.allclose(image, reference, atol=1e-5)
    assert patches.shape == (2, 225, 32) and windows[2].shape == (2, 196, 32)
    assert torch.allclose(windows[15][:, 0], image, atol=1e-5)  # a window over every patch masks nothing


# -- prompts ---------------------------------------------------------------------------------------------
def test_prompt_ensemble_is_every_state_in_every_template():
    normal, anomalous = prompt_ensemble("bottle")
    assert len(TEMPLATES) == 22 and len(normal) == 7 * 22 and len(anomalous) == 4 * 22
    assert "a photo of the flawless bottle." in normal and "a cropped photo of a bottle with damage." in anomalous
    assert "a photo of a damaged bottle for anomaly detection." in anomalous
    assert all("bottle" in p and "{" not in p for p in normal + anomalous)
    assert len(set(normal)) == len(normal) and not set(normal) & set(anomalous)
    assert {s.format("x") for s in NORMAL_STATES} >= {"x", "flawless x", "x without defect"}
    assert {s.format("x") for s in ANOMALOUS_STATES} == {"damaged x", "x with flaw", "x with defect", "x with damage"}


def test_prototypes_average_the_normalised_prompt_embeddings(detector, random_clip):
    tokenizer = open_clip.get_tokenizer(random_clip.config.stem)
    expected = []
    with torch.no_grad():
        for prompts in prompt_ensemble("bottle"):
            rows = torch.stack([F.normalize(detector.clip.encode_text(tokenizer([p]))[0], dim=-1) for p in prompts])
            expected.append(rows.mean(dim=0) / rows.mean(dim=0).norm())
    assert torch.allclose(detector.text_prototypes, torch.stack(expected), atol=1e-5)
    other = create_detector("winclip", **random_clip.params(class_name="screw"))
    assert not torch.allclose(other.text_prototypes, detector.text_prototypes, atol=1e-3)


# -- scores ---------------------------------------------------------------------------------------------------
def test_anomaly_probability_is_eq1_by_hand():
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # g_n, g_a
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [math.sqrt(0.5), math.sqrt(0.5)]])
    expected = [1 / (1 + math.exp(1 / TEMPERATURE)), 1 / (1 + math.exp(-1 / TEMPERATURE)), 0.5]
    assert anomaly_probability(f, prototypes).tolist() == pytest.approx(expected, abs=1e-6)


def test_harmonic_aggregation_by_hand():
    # A 2 x 3 grid (patches 0 1 2 / 3 4 5), 2 x 2 windows: [0, 1, 3, 4] and [1, 2, 4, 5].
    windows = window_token_indices((2, 3), 2)
    scores = torch.tensor([[0.5, 0.25]])
    result = harmonic_aggregation(scores, windows, 6)
    middle = 2 / (1 / 0.5 + 1 / 0.25)  # patches 1 and 4 are in both windows: 1/3
    assert result.tolist()[0] == pytest.approx([0.5, middle, 0.25, 0.5, middle, 0.25])
    assert middle < (0.5 + 0.25) / 2  # harmonic: a confidently normal window pulls a patch down


def test_few_shot_scores_a_copied_reference_as_the_most_normal(random_clip):
    detector = create_detector("winclip", **random_clip.params(k_shot=3)).eval()
    generator = torch.Generator().manual_seed(5)
    mean = torch.tensor(detector.input_spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(detector.input_spec.std).view(1, 3, 1, 1)
    references = (textures(3, 240, generator) - mean) / std
    others = (textures(4, 240, generator) - mean) / std
    defective = references[:1].clone()
    defective[..., 80:128, 144:192] = (1 - mean) / std  # a white square on patches rows 5-7, columns 9-11
    detector.fit_begin()
    detector.fit_batch(Batch(image=references, path=["r0", "r1", "r2"]))
    detector.fit_end()
    detector.is_fitted.fill_(True)
    assert detector.reference_patches.shape == (3 * 225, 32) and detector.reference_windows_3.shape == (3 * 169, 32)
    with torch.no_grad():
        copies = detector.predict(references[:2])
        few = {}
        for key, images in (("copies", references[:2]), ("normal", others), ("defective", defective)):
            image, patches, windows = detector.embed(images)
            few[key] = detector.few_shot(patches, windows)  # (N, P): the nearest-reference distance map
        text_score = anomaly_probability(detector.embed(references[:2])[0], detector.text_prototypes)
    # Every patch and window of a reference finds itself in the memory: distance 0, the lowest score.
    assert few["copies"].abs().max() < 1e-4
    copy_scores, normal_scores = few["copies"].amax(dim=1), few["normal"].amax(dim=1)
    assert copy_scores.max() * 100 < normal_scores.min()
    # The same reference with a white square: far from the memory exactly where the square is.
    defect_map = few["defective"].view(15, 15)
    row, col = divmod(int(defect_map.argmax()), 15)
    assert 4 <= row <= 8 and 8 <= col <= 12, (row, col)
    # Far from it only the whole-image attention of the patch tokens has changed a little.
    assert max(defect_map[:3].max(), defect_map[:, :6].max()) < defect_map.max() / 20
    # The image score combines as the paper does: (text score + max of the few-shot map) / 2.
    assert torch.allclose(copies.pred_score, (text_score + copy_scores) / 2, atol=1e-6)


def test_fitting_without_references_fails_loudly(tiny_clip):
    detector = create_detector("winclip", **tiny_clip.params(k_shot=2))
    detector.fit_begin()
    with pytest.raises(ValueError, match="no reference images"):
        detector.fit_end()


# -- weights: a resource, never random ----------------------------------------------------------------------------
def test_without_weights_the_error_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.delenv("ADCORE_ALLOW_DOWNLOAD", raising=False)
    set_registry(PluginRegistry(load_entry_points=False))
    try:
        with pytest.raises(ResourceNotFoundError) as error:
            clip_loading.resolve_clip("ViT-B-16-plus-240", "auto")
        message = str(error.value)
        assert "open_clip:ViT-B-16-plus-240" in message and "--weights FILE" in message
        assert "--allow-download" in message and "laion400m_e31" in message and "\n" not in message
        with pytest.raises(ResourceNotFoundError, match="not found at this path"):
            clip_loading.resolve_clip("ViT-B-16-plus-240", str(tmp_path / "missing.safetensors"))
    finally:
        set_registry(None)
    with pytest.raises(ValueError, match="needs pretrained CLIP weights"):
        clip_loading.resolve_clip("ViT-B-16-plus-240", "none")
    with pytest.raises(ValueError, match="no model 'ViT-Nope'"):
        clip_loading.resolve_clip("ViT-Nope", "auto")


def test_downloads_only_when_allowed_and_with_the_papers_weights(monkeypatch, random_clip):
    calls = []

    def fake_create_model(name, pretrained=None, **kwargs):
        calls.append((name, pretrained))
        raise ConnectionError("no network in tests")

    set_registry(PluginRegistry(load_entry_points=False))
    try:
        monkeypatch.setattr(clip_loading.open_clip, "create_model", fake_create_model)
        monkeypatch.setenv("ADCORE_ALLOW_DOWNLOAD", "1")
        with pytest.raises(ConnectionError):
            clip_loading.resolve_clip("ViT-B-16-plus-240", "auto")
        assert calls == [("ViT-B-16-plus-240", "laion400m_e31")]
    finally:
        set_registry(None)


def test_weights_of_another_architecture_are_refused(random_clip, tmp_path):
    config = dict(TINY_CONFIG, embed_dim=16)
    other = tmp_path / "winclip-tiny-other.json"
    other.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not fit open_clip model 'winclip-tiny-other'"):
        clip_loading.resolve_clip(str(other), str(random_clip.weights))


def test_a_resource_provider_can_serve_the_weights(random_clip):
    state = safetensors.torch.load_file(str(random_clip.weights))

    class Provider:
        name = "tiny-clip-weights"

        def resources(self):
            return [f"open_clip:{random_clip.config.stem}"]

        def fetch(self, resource_id):
            return state

    class Plugin:
        ADCORE_API = ">=2,<3"

        @hookimpl
        def adcore_register_resources(self, register):
            register(Provider())

    registry = PluginRegistry(load_entry_points=False)
    assert registry.add_plugin(Plugin(), name="tiny-provider").error is None
    set_registry(registry)
    try:
        model, name, source = clip_loading.resolve_clip(str(random_clip.config), "auto")
    finally:
        set_registry(None)
    assert (name, source) == (random_clip.config.stem, "provider:tiny-clip-weights")
    assert torch.equal(model.visual.proj, state["visual.proj"])


def test_a_few_shot_checkpoint_records_clip_instead_of_copying_it(tiny_clip, tmp_path):
    registry = PluginRegistry()
    set_registry(registry)
    try:
        detector = create_detector("winclip", registry=registry, **tiny_clip.params(k_shot=1)).eval()
        detector.fit_begin()
        detector.fit_batch(Batch(image=torch.randn(1, 3, 240, 240), path=["r"]))
        detector.fit_end()
        detector.is_fitted.fill_(True)
        path = save_checkpoint(detector, tmp_path / "model.safetensors")
    finally:
        set_registry(None)
    with safetensors.safe_open(str(path), "pt") as file:
        keys = set(file.keys())
    assert keys and not any(key.startswith("clip.") for key in keys)
    assert {"text_prototypes", "reference_patches", "reference_windows_2", "reference_windows_3"} <= keys
    metadata = read_metadata(path)
    assert metadata["external_modules"] == {"clip": f"path:{tiny_clip.weights}"}
    assert Path(path).stat().st_size < Path(tiny_clip.weights).stat().st_size / 4


def test_the_tiny_model_was_aligned(tiny_clip, random_clip):
    # Sanity of the fixture itself: aligned and random weights differ only in the image projection.
    aligned = safetensors.torch.load_file(str(tiny_clip.weights))
    random = safetensors.torch.load_file(str(random_clip.weights))
    changed = sorted(k for k in aligned if not torch.equal(aligned[k], random[k]))
    assert changed == ["visual.proj"]


def test_the_alignment_probe_separates_its_concept(tmp_path):
    from adcore_winclip.testing import align

    tiny = write_tiny_clip(tmp_path, aligned=False, seed=0)
    model = clip_loading.load_clip_file(tiny.config.stem, tiny.weights)
    accuracy = align(model, open_clip.get_tokenizer(tiny.config.stem), seed=0)
    assert accuracy >= 0.8, accuracy  # chance is 0.5; small squares (1-2 patches) are the misses
