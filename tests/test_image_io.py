"""Any image file becomes 8-bit RGB of its own size; bad files fail naming the file."""

import numpy as np
import pytest
from adcore.data.image_io import ImageReadError, list_images, read_image, read_mask
from PIL import Image

W, H = 20, 12  # non-square, so a swapped width/height would show


def _check_rgb(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    assert image.size == (W, H)
    array = np.asarray(image)
    assert array.shape == (H, W, 3) and array.dtype == np.uint8
    return array


def test_grayscale_becomes_rgb(tmp_path):
    gray = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    Image.fromarray(gray, mode="L").save(tmp_path / "l.png")
    array = _check_rgb(read_image(tmp_path / "l.png"))
    for channel in range(3):
        np.testing.assert_array_equal(array[..., channel], gray)


def test_rgb_is_kept(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(_check_rgb(read_image(tmp_path / "rgb.png")), rgb)


def test_rgba_is_composited_on_black(tmp_path):
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:, : W // 2, 3] = 255  # left half opaque, right half fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    array = _check_rgb(read_image(tmp_path / "rgba.png"))
    assert tuple(array[0, 0]) == (200, 100, 50)
    assert tuple(array[0, -1]) == (0, 0, 0)


def test_palette_image_uses_its_colours(tmp_path):
    indices = np.zeros((H, W), dtype=np.uint8)
    indices[:, W // 2 :] = 1
    image = Image.fromarray(indices, mode="P")
    image.putpalette([10, 20, 30, 240, 130, 20] + [0] * (256 * 3 - 6))
    image.save(tmp_path / "p.png")
    array = _check_rgb(read_image(tmp_path / "p.png"))
    assert tuple(array[0, 0]) == (10, 20, 30)
    assert tuple(array[0, -1]) == (240, 130, 20)


def _save_16bit(path, values):
    array = np.zeros((H, W), dtype=np.uint16)
    for row, value in enumerate(values):
        array[row] = value
    Image.fromarray(array).save(path)
    assert Image.open(path).mode == "I;16"
    return path


def test_16bit_is_scaled_by_range_not_clipped(tmp_path):
    path = _save_16bit(tmp_path / "i16.png", [0, 65535, 32768, 1000])
    array = _check_rgb(read_image(path))
    assert array[0, 0, 0] == 0
    assert array[1, 0, 0] == 255
    assert abs(int(array[2, 0, 0]) - 128) <= 1
    assert array[3, 0, 0] == round(1000 / 65535 * 255)  # 4; clipping would give 255


def test_float_tiff_is_min_max_scaled(tmp_path):
    values = np.zeros((H, W), dtype=np.float32)
    values[0], values[1], values[2] = -3.5, 0.25, 4.0  # min, middle, max; the rest 0
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    array = _check_rgb(read_image(tmp_path / "f.tif"))
    assert array[0, 0, 0] == 0
    assert array[2, 0, 0] == 255
    assert abs(int(array[1, 0, 0]) - round((0.25 + 3.5) / 7.5 * 255)) <= 1


def _truncated_png(path):
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # incompressible
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _bad_file(tmp_path, kind):
    path = tmp_path / f"bad_{kind}.png"
    if kind == "random":
        path.write_bytes(np.random.default_rng(2).integers(0, 256, 500, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        _truncated_png(path)
    elif kind == "empty":
        path.write_bytes(b"")
    return path  # "missing": never created


@pytest.mark.parametrize("reader", [read_image, read_mask])
@pytest.mark.parametrize("kind", ["random", "truncated", "empty", "missing"])
def test_bad_files_raise_naming_the_file(tmp_path, kind, reader):
    path = _bad_file(tmp_path, kind)
    with pytest.raises(ImageReadError) as info:
        reader(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)  # the CLI treats it as a user error


def test_masks_become_0_or_255(tmp_path):
    values = np.zeros((H, W), dtype=np.uint8)
    values[0, :4] = [1, 127, 128, 255]
    Image.fromarray(values, mode="L").save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png")
    assert mask.mode == "L" and mask.size == (W, H)
    array = np.asarray(mask)
    assert set(np.unique(array)) == {0, 255}
    assert list(array[0, :5]) == [255, 255, 255, 255, 0]  # anything > 0 is anomalous


def test_binary_and_rgb_masks(tmp_path):
    bits = np.zeros((H, W), dtype=bool)
    bits[2:5, 3:6] = True
    Image.fromarray(bits).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(np.asarray(read_mask(tmp_path / "bits.png")), bits * 255)
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[bits] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb_mask.png")
    np.testing.assert_array_equal(np.asarray(read_mask(tmp_path / "rgb_mask.png")), bits * 255)


def test_16bit_label_mask_keeps_small_labels(tmp_path):
    # A 16-bit mask storing region labels 1, 2 (common in annotation tools): every non-zero
    # pixel is anomalous, however small the value is relative to 65535.
    labels = np.zeros((H, W), dtype=np.uint16)
    labels[1:3, 1:3] = 1
    labels[6:8, 10:14] = 2
    Image.fromarray(labels).save(tmp_path / "labels16.png")
    np.testing.assert_array_equal(np.asarray(read_mask(tmp_path / "labels16.png")), (labels > 0) * 255)


def test_float_masks_threshold_raw_values(tmp_path):
    ones = np.ones((H, W), dtype=np.float32)  # a fully anomalous image: min == max
    Image.fromarray(ones, mode="F").save(tmp_path / "ones.tif")
    assert np.asarray(read_mask(tmp_path / "ones.tif")).min() == 255
    half = np.zeros((H, W), dtype=np.float32)
    half[:, : W // 2] = 0.5
    Image.fromarray(half, mode="F").save(tmp_path / "half.tif")
    np.testing.assert_array_equal(np.asarray(read_mask(tmp_path / "half.tif")), (half > 0) * 255)


def test_list_images_is_sorted_and_skips_hidden_and_other_files(tmp_path):
    for name in ["b.png", "a.JPG", "c.tif", ".hidden.png", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.tif"]
    with pytest.raises(FileNotFoundError, match="not a directory"):
        list_images(tmp_path / "nope")


def test_resized_pixels_are_contiguous_channels_first():
    """Every image path's input tensor: (3, H, W) uint8, contiguous (strided views slow every later op)."""
    import numpy as np
    from adcore.data.image_io import resized_pixels
    from PIL import Image

    array = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    pixels = resized_pixels(Image.fromarray(array), (40, 60))  # same size: no interpolation
    assert pixels.shape == (3, 40, 60) and pixels.dtype.is_floating_point is False
    assert pixels.is_contiguous()
    assert (pixels.permute(1, 2, 0).numpy() == array).all()
