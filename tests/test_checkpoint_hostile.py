"""A checkpoint from a stranger: whatever its header and tensors say, loading either gives a
detector that scores an image, or one ``CheckpointError`` line naming the file. Never another
exception, never a traceback from the CLI, never an allocation sized by the header alone.

The explicit cases come from issue 12; the property-based ones rewrite a real checkpoint's
header (random JSON anywhere) and tensors (random shapes, dtypes, sizes, values).
"""

from __future__ import annotations

import json
import struct
import time
import uuid
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from adcore import cli
from adcore.checkpoint import (
    MAX_METADATA_BYTES,
    CheckpointError,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from adcore.data import AnomalyDataset, load_data
from adcore.detector import NotFittedError
from adcore.engine import Engine
from adcore.plugins import PluginRegistry, set_registry
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import tiny_detectors
from tiny_detectors import TinyMean

SIZE = 32  # the tiny checkpoint's input size: (32, 32), pooled by 4 -> mean of shape (3, 8, 8)


def _tiny_registry() -> PluginRegistry:
    registry = PluginRegistry()
    info = registry.add_plugin(tiny_detectors.plugin, name="tiny-test-plugin", version="0.0.1")
    assert info.error is None, info.error
    return registry


@pytest.fixture(scope="module")
def base(tmp_path_factory, shared_mvtec):
    """A real fitted TinyMean checkpoint at 32x32: (path, its tensors, its metadata, an image file)."""
    registry = _tiny_registry()
    set_registry(registry)
    try:
        detector = TinyMean(image_size=(SIZE, SIZE), pool=4)
        splits = load_data(f"mvtec:{shared_mvtec}")
        engine = Engine(device="cpu", progress=False, batch_size=8)
        train = AnomalyDataset(splits.train, detector.input_spec)
        test = AnomalyDataset(splits.test, detector.input_spec, has_masks=True)
        engine.fit(detector, train, test)
        folder = tmp_path_factory.mktemp("hostile")
        path = save_checkpoint(detector, folder / "base.safetensors")
    finally:
        set_registry(None)
    with safetensors.safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        metadata = json.loads(handle.metadata()["adcore"])
    image = sorted((Path(shared_mvtec) / "test" / "good").iterdir())[0]
    return path, tensors, metadata, image


@pytest.fixture
def registry(base):
    registry = _tiny_registry()
    set_registry(registry)
    return registry


def _write(path: Path, tensors: dict, metadata, raw: bool = False) -> Path:
    text = metadata if raw else json.dumps(metadata)
    safetensors.torch.save_file(tensors, str(path), metadata={"adcore": text})
    return path


def _refused(path: Path, registry, match: str | tuple[str, ...] | None = None) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, registry=registry)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    if match is not None:
        assert any(m in message for m in ((match,) if isinstance(match, str) else match)), message
    return message


def _assert_scores(detector) -> None:
    height, width = detector.input_spec.image_size
    with torch.inference_mode():
        output = detector.predict(torch.rand(2, 3, height, width))
    assert output.pred_score.shape == (2,)
    if output.anomaly_map is not None:
        assert output.anomaly_map.shape == (2, 1, height, width)


def _check_outcome(path: Path, registry) -> str:
    """The rule: a detector that scores (or says it is not fitted), or one CheckpointError line."""
    try:
        detector, metadata = load_checkpoint(path, registry=registry)
    except CheckpointError as exc:
        message = str(exc)
        assert str(path) in message and "\n" not in message, message
        event(f"refused: {message.removeprefix(f'{path}: ')[:40]}")
        return "refused"
    assert isinstance(metadata, dict)
    if bool(detector.is_fitted):
        _assert_scores(detector)
        event("loaded")
        return "loaded"
    with pytest.raises(NotFittedError):
        _assert_scores(detector)
    event("loaded, not fitted")
    return "unfitted"


# -- the cases of issue 12 ---------------------------------------------------------------------
def test_the_base_checkpoint_loads_and_scores(base, registry):
    detector, metadata = load_checkpoint(base[0], registry=registry)
    assert metadata["config"]["image_size"] == [SIZE, SIZE]
    _assert_scores(detector)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m: [m], "must be a JSON object, found list"),
        (lambda m: "padim", "must be a JSON object, found str"),
        (lambda m: {**m, "format_version": "1"}, "format_version must be an integer, found '1'"),
        (lambda m: {**m, "format_version": 1.5}, "format_version must be an integer"),
        (lambda m: {k: v for k, v in m.items() if k != "detector"}, "names no detector (no 'detector' key)"),
        (lambda m: {**m, "detector": ["tiny-mean"]}, "names no detector"),
        (lambda m: {**m, "config": [1, 2]}, "config is not a JSON object"),
        (
            lambda m: {**m, "config": {**m["config"], "pool": "abc"}},
            # refused by the config where it checks types, else by the one-image check
            ("cannot rebuild detector 'tiny-mean'", "tensors and metadata disagree"),
        ),
        (lambda m: {**m, "external_modules": ["x"]}, "external_modules must be an object"),
    ],
    ids=["list", "string", "string-version", "float-version", "no-detector", "list-detector", "config-list",
         "bad-param", "external-list"],
)
def test_malformed_metadata_is_one_line(base, registry, tmp_path, change, match):
    path = _write(tmp_path / "bad.safetensors", base[1], change(base[2]))
    _refused(path, registry, match)


def test_a_multiline_value_gives_a_one_line_message(base, registry, tmp_path):
    path = _write(tmp_path / "bad.safetensors", base[1], {**base[2], "detector": "evil\nTraceback (most recent"})
    assert "Traceback (most recent" in _refused(path, registry)  # quoted on the same line


def test_a_changed_image_size_is_refused_at_load(base, registry, tmp_path):
    metadata = {**base[2], "config": {**base[2]["config"], "image_size": [64, 48]}}
    path = _write(tmp_path / "resized.safetensors", base[1], metadata)
    message = _refused(path, registry, "the checkpoint's tensors and metadata disagree")
    assert message.startswith(f"{path}: ")


@pytest.mark.parametrize("size", [[30000, 30000], [4097, 8], [4, 64], [4096, 4096 + 1], "99999999999999999999"])
def test_an_absurd_image_size_is_refused_before_building(base, registry, tmp_path, monkeypatch, size):
    built = []
    monkeypatch.setattr(TinyMean, "__init__", lambda self, *a, **k: built.append(1) or pytest.fail("built"))
    metadata = {**base[2], "config": {**base[2]["config"], "image_size": size}}
    path = _write(tmp_path / "huge.safetensors", base[1], metadata)
    started = time.perf_counter()
    _refused(path, registry, "outside the supported range")
    assert not built and time.perf_counter() - started < 5


@pytest.mark.parametrize("size", [[1e308, 32], "abc", [float("nan"), 32], None, {"h": 1}])
def test_an_image_size_that_is_not_a_size_is_refused(base, registry, tmp_path, size):
    metadata = {**base[2], "config": {**base[2]["config"], "image_size": size}}
    _refused(_write(tmp_path / "odd.safetensors", base[1], metadata), registry)


@pytest.mark.parametrize(
    "tensor",
    [torch.zeros(3, 4, 4), torch.zeros(5, 3, 8, 8), torch.zeros(3, 8, 8, dtype=torch.int64), torch.zeros(0)],
    ids=["smaller", "batched", "integer", "empty"],
)
def test_a_reshaped_buffer_is_refused_at_load(base, registry, tmp_path, tensor):
    tensors = {**base[1], "mean": tensor}
    path = _write(tmp_path / "reshaped.safetensors", tensors, base[2])
    try:
        detector, _ = load_checkpoint(path, registry=registry)
    except CheckpointError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        assert "tensors and metadata disagree" in str(exc)
    else:  # a dtype change the arithmetic accepts (int64 mean) is harmless: it must then score
        _assert_scores(detector)
        assert tensor.dtype == torch.int64


@pytest.mark.parametrize("key", ["is_fitted", "post_processor.image_threshold"])
def test_a_reshaped_flag_or_threshold_is_refused(base, registry, tmp_path, key):
    tensors = {**base[1], key: torch.ones(3, dtype=base[1][key].dtype)}
    _refused(_write(tmp_path / "flag.safetensors", tensors, base[2]), registry)


def test_an_unfitted_checkpoint_loads_without_the_smoke_test(base, registry, tmp_path):
    tensors = {**base[1], "is_fitted": torch.tensor(False), "mean": torch.zeros(7)}  # nonsense, but not fitted
    detector, _ = load_checkpoint(_write(tmp_path / "unfitted.safetensors", tensors, base[2]), registry=registry)
    assert not bool(detector.is_fitted)
    with pytest.raises(NotFittedError):
        _assert_scores(detector)


def test_metadata_over_the_limit_is_refused_before_parsing(base, registry, tmp_path):
    text = json.dumps({**base[2], "padding": "x" * (MAX_METADATA_BYTES + 1)})
    path = _write(tmp_path / "big.safetensors", base[1], text, raw=True)
    _refused(path, registry, "over the 10,000,000 limit")


def test_a_header_over_the_safetensors_limit_is_refused(base, registry, tmp_path):
    data = base[0].read_bytes()
    path = tmp_path / "header.safetensors"
    path.write_bytes(struct.pack("<Q", 2**40) + data[8:])  # claims a one-terabyte header
    assert "not a safetensors checkpoint" in _refused(path, registry)


def test_tensors_beyond_the_end_of_the_file_are_refused(base, registry, tmp_path):
    data = base[0].read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    header["mean"]["shape"] = [3, 8, 8 * 1_000_000]  # 100 MB of floats the file does not hold
    start = header["mean"]["data_offsets"][0]
    header["mean"]["data_offsets"] = [start, start + 4 * 3 * 8 * 8 * 1_000_000]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "offsets.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + size :])
    assert "not a safetensors checkpoint" in _refused(path, registry)


def test_a_checkpoint_that_is_not_a_regular_file_is_refused(registry, tmp_path):
    import os

    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    _refused(fifo, registry, "not a regular file")


def test_a_missing_plugin_names_the_distribution(base, tmp_path):
    metadata = {**base[2], "plugin_distribution": "adcore-tiny", "plugin_version": "0.0.1"}
    path = _write(tmp_path / "orphan.safetensors", base[1], metadata)
    message = _refused(path, PluginRegistry(), "detector 'tiny-mean' is not installed; install adcore-tiny")
    assert "version 0.0.1" in message


def test_padim_unknown_backbone_and_changed_size_are_one_line(tmp_path, shared_mvtec):
    from adcore_padim.model import Padim

    detector = Padim(image_size=(SIZE, SIZE), n_features=20)
    splits = load_data(f"mvtec:{shared_mvtec}")
    Engine(device="cpu", progress=False, batch_size=8).fit(
        detector,
        AnomalyDataset(splits.train, detector.input_spec),
        AnomalyDataset(splits.test, detector.input_spec, has_masks=True),
    )
    path = save_checkpoint(detector, tmp_path / "padim.safetensors")
    registry = PluginRegistry()
    with safetensors.safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        metadata = json.loads(handle.metadata()["adcore"])
    loaded, _ = load_checkpoint(path, registry=registry)
    _assert_scores(loaded)

    unknown = {**metadata, "config": {**metadata["config"], "backbone": "no_such_net"}}
    message = _refused(_write(tmp_path / "backbone.safetensors", tensors, unknown), registry)
    assert "cannot rebuild detector 'padim'" in message and "no_such_net" in message

    resized = {**metadata, "config": {**metadata["config"], "image_size": [64, 64]}}
    _refused(_write(tmp_path / "size.safetensors", tensors, resized), registry, "tensors and metadata disagree")

    reshaped = {**tensors, "gaussian.mean": tensors["gaussian.mean"][..., :-3].contiguous()}
    _refused(_write(tmp_path / "buffer.safetensors", reshaped, metadata), registry, "tensors and metadata disagree")


# -- the CLI -------------------------------------------------------------------------------------
def _cli_predict(path: Path, image: Path, output: Path, capsys) -> tuple[int, str]:
    code = cli.main(["predict", "--checkpoint", str(path), str(image), "--output", str(output), "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.err


def _assert_cli_rule(code: int, err: str) -> None:
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("adcore: error: "), err


def test_cli_predict_with_the_real_checkpoint_succeeds(base, registry, tmp_path, capsys):
    code, err = _cli_predict(base[0], base[3], tmp_path / "out", capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "predictions.csv").is_file()


@pytest.mark.parametrize(
    "change",
    [
        lambda m, t: ([m], t),
        lambda m, t: ({**m, "config": {**m["config"], "image_size": [30000, 30000]}}, t),
        lambda m, t: ({**m, "config": {**m["config"], "image_size": [64, 64]}}, t),
        lambda m, t: (m, {**t, "mean": torch.zeros(5, 3, 8, 8)}),
        lambda m, t: ({k: v for k, v in m.items() if k != "detector"}, t),
    ],
    ids=["list", "huge", "resized", "reshaped", "no-detector"],
)
def test_cli_predict_with_a_hostile_checkpoint_is_one_line(base, registry, tmp_path, capsys, change):
    metadata, tensors = change(base[2], base[1])
    path = _write(tmp_path / "hostile.safetensors", tensors, metadata)
    code, err = _cli_predict(path, base[3], tmp_path / "out", capsys)
    assert code == 2
    _assert_cli_rule(code, err)
    assert str(path) in err


# -- property-based: random headers and tensors --------------------------------------------------
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
# Sizes a stranger may try, the interesting ones more often than chance would pick them.
_SIZES = st.one_of(
    _JSON,
    st.integers(min_value=-5, max_value=5000),
    st.lists(st.integers(min_value=-5, max_value=5000), min_size=0, max_size=3),
    st.sampled_from([[SIZE, SIZE], [64, 64], [8, 8], [30000, 30000], "32,32", 32, [32, 64]]),
)
_KEYS = ["format_version", "adcore_version", "detector", "plugin", "plugin_distribution", "plugin_version",
         "config", "post_processing", "card", "external_modules", "run"]
_CONFIG_KEYS = ["image_size", "pool", "unknown_parameter"]
_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
           torch.int8, torch.uint8, torch.bool]
_HYPOTHESIS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@_HYPOTHESIS
@given(metadata=_JSON)
def test_any_json_as_the_whole_metadata(base, registry, tmp_path, metadata):
    path = _write(tmp_path / "any.safetensors", base[1], metadata)
    assert _check_outcome(path, registry) == "refused"


@_HYPOTHESIS
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(_KEYS + [f"config.{k}" for k in _CONFIG_KEYS] + ["config.image_size"] * 3),
            st.one_of(st.just("<delete>"), _JSON, _SIZES),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_random_values_anywhere_in_the_metadata(base, registry, tmp_path, edits):
    metadata = json.loads(json.dumps(base[2]))
    for key, value in edits:
        target, leaf = metadata, key
        if key.startswith("config."):
            if not isinstance(metadata.get("config"), dict):
                continue
            target, leaf = metadata["config"], key.removeprefix("config.")
        if value == "<delete>":
            target.pop(leaf, None)
        else:
            target[leaf] = value
    path = _write(tmp_path / "edited.safetensors", base[1], metadata)
    _check_outcome(path, registry)


_SHAPES = st.lists(st.integers(min_value=0, max_value=16), min_size=0, max_size=4)


@st.composite
def _tensor(draw) -> torch.Tensor:
    shape = draw(_SHAPES)
    dtype = draw(st.sampled_from(_DTYPES))
    fill = draw(st.sampled_from(["zeros", "ones", "random", "nan", "huge"]))
    values = {
        "zeros": torch.zeros(shape),
        "ones": torch.ones(shape),
        "random": torch.randn(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 1000)))),
        "nan": torch.full(shape, float("nan")),
        "huge": torch.full(shape, 1e30),
    }[fill]
    return values.to(dtype) if dtype.is_floating_point else values.nan_to_num().clamp(-100, 100).to(dtype)


@_HYPOTHESIS
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["mean", "is_fitted", "post_processor.image_threshold", "post_processor.pixel_max",
                             "extra_tensor"]),
            st.one_of(st.just("<delete>"), st.just("<retype>"), _tensor()),
        ),
        min_size=1,
        max_size=3,
    ),
    retype=st.sampled_from(_DTYPES),
)
def test_random_shapes_dtypes_and_sizes_of_the_tensors(base, registry, tmp_path, edits, retype):
    tensors = dict(base[1])
    for key, value in edits:
        if isinstance(value, str) and value == "<delete>":
            tensors.pop(key, None)
        elif isinstance(value, str):
            if key in tensors:
                tensors[key] = tensors[key].to(retype)
        else:
            tensors[key] = value.contiguous()
    assume(tensors)
    path = _write(tmp_path / "tensors.safetensors", tensors, base[2])
    _check_outcome(path, registry)


@settings(_HYPOTHESIS, max_examples=8)
@given(
    image_size=st.one_of(st.just([SIZE, SIZE]), _SIZES),
    mean=st.one_of(st.none(), st.builds(lambda: torch.rand(3, 8, 8)), _tensor()),
)
def test_cli_predict_never_shows_a_traceback(base, registry, tmp_path, capsys, image_size, mean):
    metadata = {**base[2], "config": {**base[2]["config"], "image_size": image_size}}
    tensors = dict(base[1]) if mean is None else {**base[1], "mean": mean.contiguous()}
    path = _write(tmp_path / "cli.safetensors", tensors, metadata)
    set_registry(registry)
    code, err = _cli_predict(path, base[3], tmp_path / f"out-{uuid.uuid4().hex}", capsys)
    _assert_cli_rule(code, err)
    event(f"exit {code}")


def test_read_metadata_still_reads_the_real_file(base):
    assert read_metadata(base[0])["detector"] == "tiny-mean"
