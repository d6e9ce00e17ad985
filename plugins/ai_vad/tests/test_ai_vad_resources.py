"""The networks' real loading and running paths, with tiny untrained models (no weights exist offline).

Mask R-CNN (regions), Keypoint R-CNN (pose), RAFT (flow) and CLIP (deep features) each run
through the plugin's own wrapper; RAFT-small and CLIP are also loaded from a weights file
through the detector's parameters, and asking for a network without weights fails in one line.
"""

import json
import warnings

import pytest
import torch
from adcore import ResourceNotFoundError
from adcore_ai_vad.features import KeypointPose, RaftFlow, build_clip, build_raft
from adcore_ai_vad.model import AiVad
from adcore_ai_vad.regions import MaskRcnnRegions, build_detection_model
from torch import nn
from torchvision.models.detection import KeypointRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

torch.set_grad_enabled(True)


def _tiny_backbone() -> nn.Module:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1)
    )
    backbone.out_channels = 16
    return backbone


def _detector_parts() -> dict:
    return {
        "min_size": 64,
        "max_size": 96,
        "rpn_anchor_generator": AnchorGenerator(sizes=((16, 32),), aspect_ratios=((0.5, 1.0, 2.0),)),
        "box_roi_pool": MultiScaleRoIAlign(["0"], 7, 2),
        "box_score_thresh": 0.0,
    }


def _quiet(**params) -> AiVad:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AiVad(weights="none", **params)


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    return torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))


def test_mask_rcnn_regions_run_a_torchvision_mask_rcnn(frames):
    model = MaskRCNN(
        _tiny_backbone(), num_classes=2, mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2), **_detector_parts()
    )
    everything = MaskRcnnRegions(model, confidence_threshold=0.0, min_area=1, max_regions=5)(frames)
    assert len(everything) == 2 and all(b.ndim == 2 and b.shape[1] == 4 and len(b) <= 5 for b in everything)
    assert sum(len(b) for b in everything) > 0
    nothing = MaskRcnnRegions(model, confidence_threshold=1.0, min_area=1, max_regions=5)(frames)
    assert all(len(b) == 0 for b in nothing)  # untrained: nothing is that confident


def test_keypoint_pose_is_normalised_to_the_box(frames):
    model = KeypointRCNN(
        _tiny_backbone(),
        num_classes=2,
        num_keypoints=17,
        keypoint_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
        **_detector_parts(),
    )
    pose = KeypointPose(model)
    boxes = [torch.tensor([[10.0, 5.0, 40.0, 60.0], [50.0, 0.0, 90.0, 30.0]]), torch.zeros(0, 4)]
    out = pose(frames, boxes)
    assert out.shape == (2, 34) and pose.dim == 34
    assert out.min() >= -0.05 and out.max() <= 1.05  # keypoints lie in their box
    assert pose(frames, [torch.zeros(0, 4), torch.zeros(0, 4)]).shape == (0, 34)


def test_raft_small_loads_from_a_weights_file_and_measures_flow(tmp_path):
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    path = tmp_path / "raft_small.pt"
    torch.save(raft_small(weights=None).state_dict(), path)
    detector = _quiet(flow_source="raft_small", flow_weights=str(path), use_deep_features=False)
    assert isinstance(detector.flow, RaftFlow)
    assert detector.external_modules() == {"flow": f"path:{path}"}
    first = torch.rand(1, 3, 60, 76)
    flow = detector.flow(first, first)
    assert flow.shape == (1, 2, 60, 76) and torch.isfinite(flow).all()
    with pytest.raises(RuntimeError):
        build_raft("raft_large", torch.load(path, weights_only=True))  # another architecture's weights do not load


def test_torchvision_detection_state_dicts_load_into_the_named_architecture():
    from torchvision.models.detection import keypointrcnn_resnet50_fpn, maskrcnn_resnet50_fpn

    state = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3).state_dict()
    model = build_detection_model("maskrcnn_resnet50_fpn", state)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    state = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_keypoints=5).state_dict()
    model = build_detection_model("keypointrcnn_resnet50_fpn", state)
    assert model.roi_heads.keypoint_predictor.kps_score_lowres.out_channels == 5
    with pytest.raises(ValueError, match="do not fit maskrcnn_resnet50_fpn"):
        build_detection_model("maskrcnn_resnet50_fpn", state)  # Keypoint R-CNN weights
    with pytest.raises(ValueError, match="not a torchvision Keypoint R-CNN"):
        build_detection_model("keypointrcnn_resnet50_fpn", {"backbone.x": torch.zeros(1)})


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"region_source": "mask_rcnn"}, "region_weights"),
        ({"pose_source": "keypoint_rcnn"}, "pose_weights"),
        ({"flow_source": "raft_small"}, "flow_weights"),
        ({"deep_source": "clip"}, "clip_weights"),
    ],
)
def test_a_network_without_weights_fails_in_one_line(params, parameter):
    with pytest.raises((ResourceNotFoundError, ValueError)) as info:
        _quiet(**params)
    message = str(info.value)
    assert parameter in message and "\n" not in message


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1},
}


def test_clip_embeddings_from_an_open_clip_weights_file(tmp_path, frames):
    import open_clip

    config = tmp_path / "adcore-tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    weights = tmp_path / "tiny-clip.pt"
    torch.save(open_clip.create_model("adcore-tiny-clip").state_dict(), weights)
    embedding = build_clip("adcore-tiny-clip", str(weights))
    boxes = [torch.tensor([[0.0, 0.0, 32.0, 32.0], [40.0, 10.0, 90.0, 60.0]]), torch.zeros(0, 4)]
    out = embedding(frames, boxes)
    assert out.shape == (2, 16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    detector = _quiet(deep_source="clip", clip_model="adcore-tiny-clip", clip_weights=str(weights))
    assert "clip" in detector.external_modules()
    torch.testing.assert_close(detector.clip(frames, boxes), out)
