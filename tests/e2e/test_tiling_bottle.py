"""Tiling on a real high-resolution image: a bottle image with a small defect, upscaled 4x.

The 2048-pixel image is scored two ways by PatchCore at a 64-pixel input, each model fitted on
what it will see: **plain** (the whole image resized to 64: fitted on whole normal images
resized so) and **tiled** (512-pixel tiles, each resized to 64: fitted on the tiles of normal
images). Tiling sees the defect at four times the resolution: its score stands further above
the normal images' scores, and its full-resolution map peaks on the defect.

PatchCore, not PaDiM: PaDiM models each feature position with its own Gaussian, and tiles
from all over the object give every position a mixture of contents; measured on this setup,
tiled PaDiM separated the defects less well than plain PaDiM (docs/deploy.md#tiling).
"""

import numpy as np
import pytest
from adcore import AnomalyDataset, Engine, ImageRecord, create_detector
from adcore.frames import model_input
from adcore.tiling import score_image, tile_boxes
from PIL import Image

pytestmark = pytest.mark.e2e

UPSCALE, TILE, SIZE = 4, 512, 64
DEFECT = "contamination/014"  # a thin streak: 1757 pixels of a 512 x 512 image


def _upscaled(path) -> Image.Image:
    with Image.open(path) as image:
        original = image.convert("RGB")
    return original.resize((original.width * UPSCALE, original.height * UPSCALE), Image.BILINEAR)


def _fit(folder):
    detector = create_detector("patchcore", seed=0, params={"image_size": [SIZE, SIZE]})
    records = [ImageRecord(p) for p in sorted(folder.glob("*.png"))]
    Engine(device="cpu", progress=False, log=lambda message: None).fit(
        detector, AnomalyDataset(records, detector.input_spec)
    )
    return detector


def test_tiling_finds_a_small_defect_that_resizing_scores_lower(bottle_dir, tmp_path):
    tiles, whole = tmp_path / "tiles", tmp_path / "whole"
    tiles.mkdir()
    whole.mkdir()
    for path in sorted((bottle_dir / "train" / "good").glob("*.png"))[:10]:
        big = _upscaled(path)
        # Saved at the model's input size, exactly as score_image feeds them (crop, Pillow resize).
        Image.fromarray(model_input(big, (SIZE, SIZE)).permute(1, 2, 0).numpy()).save(whole / path.name)
        for k, box in enumerate(tile_boxes(*big.size, TILE)):
            pixels = model_input(big.crop(box), (SIZE, SIZE)).permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(tiles / f"{path.stem}_{k:02d}.png")
    tiled_model, plain_model = _fit(tiles), _fit(whole)

    defect_path = bottle_dir / "test" / f"{DEFECT}.png"
    high_res = tmp_path / "defect_2048.png"
    _upscaled(defect_path).save(high_res, compress_level=1)  # the high-resolution image, as a file
    normals = [_upscaled(p) for p in sorted((bottle_dir / "test" / "good").glob("*.png"))[:4]]

    def margin(model, tile):
        normal = max(score_image(model, image, tile=tile).score for image in normals)
        return model.predict_image(high_res, tile=tile).score / normal

    tiled, plain = margin(tiled_model, TILE), margin(plain_model, None)
    print(f"defect score / highest normal score: tiled {tiled:.3f}, plain {plain:.3f}")
    assert tiled > 1.3  # found: well above every normal image
    assert plain < tiled  # resizing the whole image scores it lower

    result = tiled_model.predict_image(high_res, tile=TILE)
    assert result.anomaly_map.shape == (2048, 2048)
    mask = np.asarray(Image.open(bottle_dir / "ground_truth" / f"{DEFECT}_mask.png")) > 0
    ys, xs = np.nonzero(mask)
    peak_y, peak_x = np.unravel_index(int(np.argmax(result.anomaly_map)), result.anomaly_map.shape)
    margin_px = 16 * UPSCALE  # the map is blurred: allow a few feature cells around the mask
    assert xs.min() * UPSCALE - margin_px <= peak_x <= (xs.max() + 1) * UPSCALE + margin_px
    assert ys.min() * UPSCALE - margin_px <= peak_y <= (ys.max() + 1) * UPSCALE + margin_px
