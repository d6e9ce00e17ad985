"""Input sizes that keep the data's aspect ratio (``adcore.input_size``) and ``--image-size H,W``."""

import numpy as np
import pytest
from adcore.checkpoint import read_metadata
from adcore.cli import main
from adcore.input_size import aspect_preserving_size, input_size_for, median_aspect_ratio, parse_image_size
from helpers import anomalous_image, normal_image, save_png, single_thread
from PIL import Image


def test_parse_image_size():
    assert parse_image_size("256") == (256, 256)
    assert parse_image_size("640,256") == (640, 256)
    assert parse_image_size("640x256") == (640, 256)
    for bad in ("", "a,b", "1,2,3", "0", "-5,4"):
        with pytest.raises(ValueError, match="--image-size"):
            parse_image_size(bad)


def test_aspect_preserving_size_keeps_the_short_side_and_rounds_the_long_one():
    assert aspect_preserving_size((256, 256), 512 / 203) == (640, 256)  # KolektorSDD: tall
    assert aspect_preserving_size((256, 256), 256 / 512) == (256, 512)  # wide
    assert aspect_preserving_size((256, 256), 1.03) == (256, 256)  # nearly square stays square
    assert aspect_preserving_size((256, 256), 1.0) == (256, 256)
    assert aspect_preserving_size((128, 128), 3.0, multiple=16) == (384, 128)
    assert aspect_preserving_size((64, 64), 1.2, multiple=32) == (64, 64)  # never shorter than the short side


def test_median_aspect_ratio_reads_headers(tmp_path):
    paths = []
    for i, (w, h) in enumerate([(40, 100), (40, 100), (50, 50)]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (w, h)).save(paths[-1])
    assert median_aspect_ratio(paths) == pytest.approx(2.5)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        median_aspect_ratio([tmp_path / "broken.png"])


def test_square_only_detectors_keep_their_size(tmp_path):
    Image.new("RGB", (40, 100)).save(tmp_path / "a.png")

    class Square:
        square_input = True

    class Any:
        size_multiple = 8

    assert input_size_for(Square, (32, 32), [tmp_path / "a.png"]) == (32, 32)
    assert input_size_for(Any, (32, 32), [tmp_path / "a.png"]) == (80, 32)


def _tall_mvtec(root, height=160, width=64):
    """A tiny MVTec category of tall images (2.5 : 1), the defect a white square."""
    crop = lambda a: np.ascontiguousarray(np.tile(a, (3, 1, 1))[:height, :width])
    for i in range(10):
        save_png(root / "train" / "good" / f"{i:03d}.png", crop(normal_image(i)))
    for i in range(3):
        save_png(root / "test" / "good" / f"{i:03d}.png", crop(normal_image(100 + i)))
        image, mask = anomalous_image(i)
        save_png(root / "test" / "bad" / f"{i:03d}.png", crop(image))
        save_png(root / "ground_truth" / "bad" / f"{i:03d}_mask.png", crop(mask[..., None])[..., 0])
    return root


def _fitted_size(output):
    return tuple(read_metadata(output / "model.safetensors")["config"]["image_size"])


@pytest.mark.usefixtures("tiny_registry")
def test_fit_keeps_the_aspect_ratio_by_default_and_image_size_overrides(tmp_path, capsys):
    data = f"mvtec:{_tall_mvtec(tmp_path / 'tall')}"
    with single_thread():
        assert main(["fit", "--model", "tiny-mean", "--data", data, "--output", str(tmp_path / "auto"), "--no-progress"]) == 0
    assert _fitted_size(tmp_path / "auto") == (160, 64)  # 2.5 x 64, a multiple of 32
    assert "input size 160x64" in capsys.readouterr().err
    panel = next((tmp_path / "auto" / "heatmaps").glob("*.png"))
    with Image.open(panel) as image:  # each tile of the panel is as tall as the image is
        assert image.height > image.width / 4
    with single_thread():
        assert main(
            ["fit", "--model", "tiny-mean", "--data", data, "--output", str(tmp_path / "square"), "--image-size", "64", "--no-progress"]
        ) == 0
        assert main(
            ["fit", "--model", "tiny-mean", "--data", data, "--output", str(tmp_path / "hw"), "--image-size", "96,32", "--no-progress"]
        ) == 0
    assert _fitted_size(tmp_path / "square") == (64, 64)
    assert _fitted_size(tmp_path / "hw") == (96, 32)
