"""Hostile and careless image input: pipes named like images, masks of another size, non-finite
float TIFFs, EXIF-rotated photos, and a fuzz test over mutated real PNG and JPEG bytes (plus
a float TIFF).

The rule everywhere: an RGB image (or a 0/255 mask) comes back, or one ``ImageReadError``
line naming the file. Never another exception, never a hang.
"""

from __future__ import annotations

import io
import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from adcore.data import AnomalyDataset, ImageRecord, load_data
from adcore.data.image_io import ImageReadError, list_images, read_image, read_mask
from adcore.protocols import InputSpec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import anomalous_image, make_mvtec, normal_image, save_png

ORIENTATION = 0x0112  # the EXIF tag
SPEC = InputSpec(image_size=(32, 32))


def _within(seconds: float, call):
    """Run ``call`` in a daemon thread; fail (instead of hanging the suite) if it does not return."""
    result: dict = {}

    def run():
        try:
            result["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (blocked on a pipe?)"
    if "error" in result:
        raise result["error"]
    return result["value"]


def _one_line(exc: ImageReadError, path: Path) -> None:
    message = str(exc)
    assert str(path) in message and "\n" not in message, message


# -- named pipes and other non-regular files ----------------------------------------------------
def test_a_named_pipe_in_a_folder_is_skipped(tmp_path):
    save_png(tmp_path / "a.png", normal_image(0))
    os.mkfifo(tmp_path / "b.png")
    (tmp_path / "c.png").mkdir()
    assert [p.name for p in _within(5, lambda: list_images(tmp_path))] == ["a.png"]
    assert [p.name for p in _within(5, lambda: list_images(tmp_path, recursive=True))] == ["a.png"]


def test_a_named_pipe_in_a_training_folder_does_not_hang(tmp_path):
    root = make_mvtec(tmp_path / "category", n_train=3, n_good=1, n_bad=1)
    os.mkfifo(root / "train" / "good" / "999.png")
    splits = _within(10, lambda: load_data(f"mvtec:{root}"))
    assert [r.path.name for r in splits.train] == ["000.png", "001.png", "002.png"]


def test_a_named_pipe_as_an_mvtec_mask_is_named(tmp_path):
    root = make_mvtec(tmp_path / "category", n_train=2, n_good=1, n_bad=1)
    mask = root / "ground_truth" / "scratch" / "000_mask.png"
    mask.unlink()
    os.mkfifo(mask)
    with pytest.raises(FileNotFoundError, match="000_mask.png is not a regular file"):
        _within(10, lambda: load_data(f"mvtec:{root}"))


@pytest.mark.parametrize("reader", [read_image, read_mask])
def test_reading_a_named_pipe_is_refused_at_once(tmp_path, reader):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageReadError, match="not a regular file") as info:
        _within(5, lambda: reader(fifo))
    _one_line(info.value, fifo)


def test_reading_a_folder_is_refused(tmp_path):
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(ImageReadError, match="not a regular file") as info:
        read_image(folder)
    _one_line(info.value, folder)


# -- masks of another size ----------------------------------------------------------------------
def test_a_mask_of_another_size_is_refused(tmp_path):
    root = make_mvtec(tmp_path / "category", n_train=2, n_good=1, n_bad=2)
    mask_path = root / "ground_truth" / "scratch" / "001_mask.png"
    Image.open(mask_path).resize((48, 40)).save(mask_path)
    splits = load_data(f"mvtec:{root}")
    dataset = AnomalyDataset(splits.test, SPEC, has_masks=True)
    dataset[1]  # the first defect's mask matches
    with pytest.raises(ImageReadError) as info:
        dataset[2]
    image_path = root / "test" / "scratch" / "001.png"
    assert str(info.value) == f"mask {mask_path} is 48x40 but image {image_path} is 64x64"


# -- non-finite float images --------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["all-nan", "one-nan", "inf", "-inf"])
@pytest.mark.parametrize("reader", [read_image, read_mask])
def test_a_non_finite_float_tiff_is_refused(tmp_path, bad, reader):
    values = np.linspace(0, 1, 12 * 20, dtype=np.float32).reshape(12, 20)
    if bad == "all-nan":
        values[:] = np.nan
    else:
        values[3, 4] = {"one-nan": np.nan, "inf": np.inf, "-inf": -np.inf}[bad]
    path = tmp_path / "f.tif"
    Image.fromarray(values, mode="F").save(path)
    with pytest.raises(ImageReadError, match="NaN or infinite") as info:
        reader(path)
    _one_line(info.value, path)


# -- EXIF orientation ---------------------------------------------------------------------------
def _save_with_orientation(path: Path, array: np.ndarray, orientation: int | None) -> Path:
    image = Image.fromarray(array)
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, exif=exif.tobytes())
    return path


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((12, 20, 3), dtype=np.uint8)  # 20 wide, 12 high, as stored
    stored[0, 0] = (255, 0, 0)  # the stored top-left pixel is red
    # Orientation 6: the camera was turned; a viewer rotates 90 degrees clockwise.
    path = _save_with_orientation(tmp_path / "photo.png", stored, 6)
    image = read_image(path)
    assert image.size == (12, 20)  # (width, height): upright now
    np.testing.assert_array_equal(np.asarray(image), np.rot90(stored, k=-1))
    assert tuple(np.asarray(image)[0, -1]) == (255, 0, 0)  # stored top-left -> upright top-right
    jpeg = _save_with_orientation(tmp_path / "photo.jpg", stored, 8)
    assert read_image(jpeg).size == (12, 20)
    for orientation in (None, 1, 9, 0):  # absent, upright or not a valid value: left as stored
        path = _save_with_orientation(tmp_path / f"o{orientation}.png", stored, orientation)
        assert read_image(path).size == (20, 12)


def test_exif_orientation_of_masks_matches_their_images(tmp_path):
    upright, upright_mask = anomalous_image(3, size=64)
    upright, upright_mask = upright[:, :48], upright_mask[:, :48]  # 48 wide, 64 high
    # The photo is stored sideways with an orientation tag (as cameras do); the mask was drawn
    # on the upright view and carries no tag. Both must line up.
    image_path = _save_with_orientation(tmp_path / "bad" / "x.png", np.ascontiguousarray(np.rot90(upright)), 6)
    mask_path = _save_with_orientation(tmp_path / "masks" / "x.png", np.ascontiguousarray(upright_mask), None)
    # The same mask stored sideways with its own tag must give the same result.
    sideways_mask = np.ascontiguousarray(np.rot90(upright_mask))
    tagged_mask = _save_with_orientation(tmp_path / "masks2" / "x.png", sideways_mask, 6)
    spec = InputSpec(image_size=(64, 48))
    for mask in (mask_path, tagged_mask):
        dataset = AnomalyDataset([ImageRecord(image_path, label=1, mask_path=mask)], spec, has_masks=True)
        pixels, decoded_mask = dataset.raw(0)
        np.testing.assert_array_equal(pixels.permute(1, 2, 0).numpy(), upright)
        np.testing.assert_array_equal(decoded_mask[0].numpy(), upright_mask > 127)


# -- fuzz: mutated real PNG and JPEG bytes ------------------------------------------------------
def _sources() -> list[tuple[str, bytes]]:
    """A few real files: MVTec bottle images when ADCORE_MVTEC_BOTTLE is set, else generated ones."""
    sources = []
    bottle = os.environ.get("ADCORE_MVTEC_BOTTLE")
    if bottle and Path(bottle).is_dir():
        paths = sorted(Path(bottle).glob("test/*/*.png"))[::40][:3]
        if paths:
            sources.append((".png", paths[0].read_bytes()))  # one file exactly as MVTec ships it (900x900)
        for path in paths[1:]:  # the others re-encoded at 128x128, PNG and JPEG, to keep the fuzz quick
            with Image.open(path) as image:
                small = image.convert("RGB").resize((128, 128))
            for suffix, options in [(".png", {"format": "PNG"}), (".jpg", {"format": "JPEG", "quality": 85})]:
                buffer = io.BytesIO()
                small.save(buffer, **options)
                sources.append((suffix, buffer.getvalue()))
    base = Image.fromarray(normal_image(0, size=48))
    for suffix, options in [
        (".png", {"format": "PNG"}),
        (".jpg", {"format": "JPEG", "quality": 90}),
        (".jpg", {"format": "JPEG", "progressive": True, "exif": _exif(6)}),
        (".png", {"format": "PNG", "exif": _exif(3)}),
    ]:
        buffer = io.BytesIO()
        base.save(buffer, **options)
        sources.append((suffix, buffer.getvalue()))
    buffer = io.BytesIO()
    Image.fromarray((np.arange(48 * 48, dtype=np.uint16) * 17).reshape(48, 48)).save(buffer, format="PNG")
    sources.append((".png", buffer.getvalue()))  # 16-bit grey
    buffer = io.BytesIO()
    base.convert("P", palette=Image.Palette.ADAPTIVE).save(buffer, format="PNG", transparency=0)
    sources.append((".png", buffer.getvalue()))  # palette with transparency
    buffer = io.BytesIO()
    Image.fromarray(np.linspace(-1, 1, 48 * 48, dtype=np.float32).reshape(48, 48), mode="F").save(buffer, "TIFF")
    sources.append((".tif", buffer.getvalue()))  # float: mutations may make values non-finite
    return sources


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif.tobytes()


SOURCES = _sources()
MAX_SECONDS = 5.0  # per file; a mutated header may claim a large image, bounded by Pillow's pixel limit


def _mutate(data: bytes, rng: random.Random, n_mutations: int) -> bytes:
    data = bytearray(data)
    for _ in range(n_mutations):
        kind = rng.choice(["flip", "byte", "interesting", "truncate", "insert", "delete", "duplicate"])
        # Headers (sizes, chunk lengths, markers) are where decoders trip: aim there half the time.
        position = rng.randrange(min(len(data), 128)) if rng.random() < 0.5 else rng.randrange(len(data))
        if kind == "flip":
            data[position] ^= 1 << rng.randrange(8)
        elif kind == "byte":
            data[position] = rng.randrange(256)
        elif kind == "interesting":
            value = rng.choice([b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff", b"\x00\x00", b"\x7f\xff\xff\xff"])
            data[position : position + len(value)] = value
        elif kind == "truncate":
            del data[max(position, 1) :]
        elif kind == "insert":
            data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif kind == "delete":
            del data[position : position + rng.randint(1, 16)]
        else:
            start = rng.randrange(len(data))
            data[position:position] = data[start : start + rng.randint(1, 64)]
        if not data:
            break
    return bytes(data)


def _check_file(path: Path) -> str:
    """The rule for one file, for both readers; returns the outcome."""
    outcomes = []
    for reader, mode in ((read_image, "RGB"), (read_mask, "L")):
        started = time.perf_counter()
        try:
            image = reader(path)
        except ImageReadError as exc:
            _one_line(exc, path)
            outcomes.append("refused")
        else:
            assert image.mode == mode and image.size[0] > 0 and image.size[1] > 0
            np.asarray(image)  # the pixels are really there
            outcomes.append("decoded")
        elapsed = time.perf_counter() - started
        assert elapsed < MAX_SECONDS, f"{reader.__name__} took {elapsed:.1f} s on a {path.stat().st_size}-byte file"
    return outcomes[0]


def test_fuzz_seeded_mutations_of_real_files(tmp_path):
    rng = random.Random(12)
    outcomes = {"decoded": 0, "refused": 0}
    for index, (suffix, data) in enumerate(SOURCES):
        for round_ in range(100):
            path = tmp_path / f"s{index}-{round_}{suffix}"
            path.write_bytes(_mutate(data, rng, rng.randint(1, 6)))
            outcomes[_check_file(path)] += 1
            path.unlink()
    assert outcomes["decoded"] > 0 and outcomes["refused"] > 0, outcomes  # both paths exercised


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None)
@given(
    source=st.integers(min_value=0, max_value=len(SOURCES) - 1),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    n_mutations=st.integers(min_value=1, max_value=12),
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=4096)),
)
def test_fuzz_hypothesis_mutations(tmp_path, source, seed, n_mutations, cut):
    suffix, data = SOURCES[source]
    mutated = _mutate(data, random.Random(seed), n_mutations)
    if cut is not None:
        mutated = mutated[:cut]
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(mutated)
    _check_file(path)


def test_every_source_decodes_unmutated(tmp_path):
    for index, (suffix, data) in enumerate(SOURCES):
        path = tmp_path / f"source{index}{suffix}"
        path.write_bytes(data)
        assert _check_file(path) == "decoded"
