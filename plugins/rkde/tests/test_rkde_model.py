"""R-KDE as a whole on small synthetic images: regions, scores, map, filtering, seeds, Faster R-CNN."""

from __future__ import annotations

import pytest
import torch
import torchvision
from adcore import Batch, ResourceNotFoundError
from adcore_rkde.model import Rkde
from adcore_rkde.regions import paint_regions
from safetensors.torch import save_file

SIZE = 128


def _images(n: int, seed: int, defect: bool = False) -> torch.Tensor:
    """Smooth normalised textures; a defect is a saturated square at (64..96, 32..64)."""
    g = torch.Generator().manual_seed(seed)
    images = 0.2 * torch.randn(n, 3, SIZE, SIZE, generator=g) + torch.linspace(-0.5, 0.5, SIZE).view(1, 1, 1, SIZE)
    if defect:
        images[:, :, 32:64, 64:96] = 1.0
    return images


def _fit(detector: Rkde, images: torch.Tensor) -> Rkde:
    detector.eval()
    detector.fit_begin()
    for chunk in images.split(8):
        detector.fit_batch(Batch(image=chunk, path=[""] * len(chunk)))
    detector.fit_end()
    detector.is_fitted.fill_(True)
    return detector


@pytest.fixture(scope="module")
def fitted() -> Rkde:
    torch.manual_seed(0)
    return _fit(Rkde(image_size=SIZE), _images(12, 0))


def test_defect_region_scores_highest_and_the_map_paints_the_regions(fitted):
    with torch.no_grad():
        normal, defect = fitted(_images(3, 1)), fitted(_images(3, 2, defect=True))
    assert defect.pred_score.min() > normal.pred_score.max()
    for output in (normal, defect):
        assert output.anomaly_map.shape == (3, 1, SIZE, SIZE) and len(output.regions) == 3
        for score, regions, anomaly_map in zip(output.pred_score, output.regions, output.anomaly_map, strict=True):
            assert regions.ndim == 2 and regions.shape[1] == 5 and len(regions) > 0
            assert score == regions[:, 4].max()  # the image score is the largest region score
            assert torch.equal(anomaly_map[0], paint_regions(regions, (SIZE, SIZE), fitted.background))
    # The most anomalous region of a defective image overlaps the defect.
    best = defect.regions[0][defect.regions[0][:, 4].argmax()]
    x0, y0, x1, y1 = best[:4].tolist()
    assert x0 < 96 and x1 > 64 and y0 < 64 and y1 > 32
    # The map is higher on the defect than far from it.
    assert defect.anomaly_map[:, 0, 40:56, 72:88].mean() > defect.anomaly_map[:, 0, 100:, :20].mean()
    # Background: the lowest training-region score, below every normal region's score here.
    assert fitted.background <= normal.regions[0][:, 4].min()


def test_filtering_parameters_reach_the_output():
    torch.manual_seed(0)
    images = _images(10, 0)
    base = _fit(Rkde(image_size=SIZE, n_pca_components=4), images)
    with torch.no_grad():
        regions = base(images[:2]).regions[0]
    sides = regions[:, 2] - regions[:, 0]
    assert set(sides.tolist()) == {32.0, 48.0, 64.0}  # the grid: 0.25, 0.375, 0.5 of 128 px

    few = _fit(Rkde(image_size=SIZE, n_pca_components=4, max_detections_per_image=5), images)
    big = _fit(Rkde(image_size=SIZE, n_pca_components=4, min_box_size=40), images)
    sure = _fit(Rkde(image_size=SIZE, n_pca_components=4, confidence_threshold=1.0), images)
    strict = _fit(Rkde(image_size=SIZE, n_pca_components=4, iou_threshold=0.3), images)
    with torch.no_grad():
        assert all(len(r) == 5 for r in few(images[:2]).regions)
        assert (big(images[:2]).regions[0][:, 2:4] - big(images[:2]).regions[0][:, :2]).min() >= 40
        assert all(len(r) == 1 for r in sure(images[:2]).regions)  # only the most energetic box
        # Default 0.7: no grid box overlaps another that much, so all 7x7 + 5x5 + 3x3 are kept;
        # at 0.3, half-overlapping neighbours (IoU 1/3) are suppressed.
        assert len(regions) == 83
        kept = strict(images[:2]).regions[0]
        overlaps = torchvision.ops.box_iou(kept[:, :4], kept[:, :4]).fill_diagonal_(0)
        assert len(kept) < 83 and overlaps.max() <= 0.3


def test_the_seed_chooses_the_training_subset():
    images = _images(6, 0)

    def kde_points(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return _fit(Rkde(image_size=SIZE, n_pca_components=4, max_training_points=60), images).kde.points.clone()

    first, again, other = kde_points(0), kde_points(0), kde_points(1)
    assert first.shape[0] == 60
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_too_few_regions_fail_loudly():
    detector = Rkde(image_size=SIZE)
    detector.fit_begin()
    with pytest.raises(ValueError, match="training regions"):
        detector.fit_end()


# -- the Faster R-CNN path, with a tiny untrained detector saved to a file ----------------------------
@pytest.fixture(scope="module")
def detector_file(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3
    )
    path = tmp_path_factory.mktemp("frcnn") / "tiny_frcnn.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("roi_stage", ["rpn", "detection"])
def test_faster_rcnn_regions_from_a_weights_file(detector_file, roi_stage):
    torch.manual_seed(0)
    params = {
        "image_size": SIZE,
        "region_source": "faster_rcnn",
        "detector_architecture": "fasterrcnn_mobilenet_v3_large_320_fpn",
        "detector_weights": str(detector_file),
        "roi_stage": roi_stage,
        "min_box_size": 4,
        "max_detections_per_image": 20,
        "n_pca_components": 4,
    }
    detector = _fit(Rkde(**params), _images(6, 0))
    assert detector.region_detector_source == f"path:{detector_file}"
    assert detector.external_modules() == {"region_detector": f"path:{detector_file}"}
    images = _images(2, 3)
    with torch.no_grad():
        output = detector(images)
        # The regions are the detector's own boxes, filtered: recompute them from the network.
        pixels = (images * 0.5 + 0.5).clamp(0, 1)
        boxes, confidences = detector.region_detector(pixels)
    assert output.pred_score.shape == (2,) and torch.isfinite(output.pred_score).all()
    for regions, raw_boxes, raw_conf in zip(output.regions, boxes, confidences, strict=True):
        assert 0 < len(regions) <= 20
        sides = torch.minimum(regions[:, 2] - regions[:, 0], regions[:, 3] - regions[:, 1])
        assert sides.min() >= 4 and regions[:, :4].min() >= 0 and regions[:, :4].max() <= SIZE
        best = raw_boxes[raw_conf.argmax()].clamp(0, SIZE)
        assert (regions[:, :4] - best).abs().amax(dim=1).min() < 1e-4  # the most confident box survives
    if roi_stage == "rpn":
        assert len(boxes[0]) > 20  # many proposals before filtering


def test_faster_rcnn_without_weights_says_what_to_pass():
    with pytest.raises(ResourceNotFoundError, match="detector_weights"):
        Rkde(image_size=SIZE, region_source="faster_rcnn")


def test_checkpoint_keeps_the_detector_out_and_reloads_it(detector_file, tmp_path):
    from adcore import load_checkpoint, save_checkpoint
    from adcore.plugins import PluginRegistry, set_registry

    set_registry(PluginRegistry())
    try:
        torch.manual_seed(0)
        detector = _fit(
            Rkde(
                image_size=SIZE,
                region_source="faster_rcnn",
                detector_architecture="fasterrcnn_mobilenet_v3_large_320_fpn",
                detector_weights=str(detector_file),
                roi_stage="rpn",
                min_box_size=4,
                max_detections_per_image=10,
                n_pca_components=4,
            ),
            _images(6, 0),
        )
        path = save_checkpoint(detector, tmp_path / "model.safetensors")
        restored, metadata = load_checkpoint(path)
        assert metadata["external_modules"] == {"region_detector": f"path:{detector_file}"}
        images = _images(2, 4, defect=True)
        with torch.no_grad():
            assert torch.equal(restored.eval()(images).pred_score, detector(images).pred_score)
    finally:
        set_registry(None)
