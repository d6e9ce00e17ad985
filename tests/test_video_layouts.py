"""The four video layouts (UCSD, Avenue, ShanghaiTech, plain folder) on tiny generated trees, spec
parsing, validation splits by whole videos, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from adcore.data import load_data
from adcore.data.video_dataset import VideoDataset
from adcore.data.video_io import VideoReadError
from adcore.data.video_layouts import NpyFrame, split_videos
from adcore.data.video_synthetic import _write_video, make_video, make_video_folder
from adcore.protocols import InputSpec
from PIL import Image

SIZE = 24


def _frames(count: int, seed: int = 0) -> list[np.ndarray]:
    return make_video(count, SIZE, seed)[0]


def _write_folder(folder: Path, images: list[np.ndarray], suffix: str = ".png", grey: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        picture = Image.fromarray(image)
        (picture.convert("L") if grey else picture).save(folder / f"{i + 1:03d}{suffix}")


def _mask(box: bool) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    if box:
        mask[4:10, 6:12] = 255
    return mask


# -- UCSD ---------------------------------------------------------------------------------------
def _ucsd(root: Path, gt_for_second: bool) -> Path:
    _write_folder(root / "Train" / "Train001", _frames(5), ".tif", grey=True)
    _write_folder(root / "Test" / "Test001", _frames(4, 1), ".tif", grey=True)
    _write_folder(root / "Test" / "Test001_gt", [_mask(i >= 2) for i in range(4)], ".bmp")
    _write_folder(root / "Test" / "Test002", _frames(4, 2), ".tif", grey=True)
    if gt_for_second:
        _write_folder(root / "Test" / "Test002_gt", [_mask(i == 0) for i in range(4)], ".bmp")
    (root / "Test" / "UCSDped2.m").write_text(
        "TestVideoFile = {};\nTestVideoFile{end+1}.gt_frame = [3:4];\nTestVideoFile{end+1}.gt_frame = [1:1, 3:4];\n"
    )
    return root


def test_ucsd_labels_from_masks_and_from_the_m_file(tmp_path):
    splits = load_data(f"video:{_ucsd(tmp_path / 'UCSDped2', gt_for_second=False)}")
    assert splits.video and splits.name == "video:UCSDped2"
    assert len(splits.train) == 5 and all(r.label == 0 for r in splits.train)
    by_video = {}
    for record in splits.test:
        by_video.setdefault(Path(record.video).name, []).append(record)
    assert [r.label for r in by_video["Test001"]] == [0, 0, 1, 1]  # from the _gt masks
    assert [r.label for r in by_video["Test002"]] == [1, 0, 1, 1]  # from UCSDped2.m (1-based ranges)
    assert by_video["Test001"][2].mask_path.name == "003.bmp"
    assert not splits.has_masks  # Test002 has anomalies but no masks: no pixel metrics


def test_ucsd_with_masks_for_every_video_has_pixel_ground_truth(tmp_path):
    splits = load_data(f"video:ucsd:{_ucsd(tmp_path / 'ped', gt_for_second=True)}")
    assert splits.has_masks
    test = VideoDataset(splits.test, InputSpec((12, 12)), has_masks=True)
    pixels, mask = test.raw(2)
    assert pixels.shape == (3, 12, 12) and mask.shape == (1, 12, 12) and mask.any()
    assert not test.raw(0)[1].any()


def test_ucsd_mask_count_must_match_the_frames(tmp_path):
    root = _ucsd(tmp_path / "ped", gt_for_second=True)
    (root / "Test" / "Test002_gt" / "004.bmp").unlink()
    with pytest.raises(VideoReadError, match=r"Test002_gt: 3 masks but .*Test002 has 4 frames"):
        load_data(f"video:ucsd:{root}")


# -- CUHK Avenue ------------------------------------------------------------------------------------
def test_avenue_labels_from_the_mat_masks(tmp_path):
    from scipy.io import savemat

    root = tmp_path / "Avenue"
    (root / "training_videos").mkdir(parents=True)
    (root / "testing_videos").mkdir()
    _write_video(root / "training_videos" / "01.avi", _frames(6))
    _write_video(root / "testing_videos" / "01.avi", _frames(5, 3))
    _write_video(root / "testing_videos" / "02.avi", _frames(4, 4))
    labels = root / "ground_truth_demo" / "testing_label_mask"
    labels.mkdir(parents=True)
    volume = np.empty((1, 5), dtype=object)
    for i in range(5):
        volume[0, i] = _mask(i in (1, 2))
    savemat(labels / "1_label.mat", {"volLabel": volume})
    splits = load_data(f"video:{root}")
    first = [r for r in splits.test if r.video.endswith("01.avi")]
    second = [r for r in splits.test if r.video.endswith("02.avi")]
    assert [r.label for r in first] == [0, 1, 1, 0, 0]
    assert [r.label for r in second] == [None] * 4  # no label file: unlabelled
    assert first[3].path.endswith("01.avi#000003") and not splits.has_masks
    volume = np.empty((1, 4), dtype=object)
    for i in range(4):
        volume[0, i] = _mask(False)
    savemat(labels / "1_label.mat", {"volLabel": volume})
    with pytest.raises(VideoReadError, match=r"1_label.mat: 4 frame masks but .*01.avi has 5 frames"):
        load_data(f"video:avenue:{root}")


# -- ShanghaiTech ----------------------------------------------------------------------------------
def _shanghaitech(root: Path) -> Path:
    (root / "training" / "videos").mkdir(parents=True)
    _write_video(root / "training" / "videos" / "01_001.avi", _frames(6))
    _write_folder(root / "testing" / "frames" / "01_0014", _frames(5, 5), ".jpg")
    (root / "testing" / "test_frame_mask").mkdir(parents=True)
    (root / "testing" / "test_pixel_mask").mkdir(parents=True)
    np.save(root / "testing" / "test_frame_mask" / "01_0014.npy", np.array([0, 0, 1, 1, 0]))
    pixels = np.stack([_mask(i in (2, 3)) // 255 for i in range(5)]).astype(np.uint8)
    np.save(root / "testing" / "test_pixel_mask" / "01_0014.npy", pixels)
    return root


def test_shanghaitech_frame_labels_and_memory_mapped_pixel_masks(tmp_path):
    splits = load_data(f"video:{_shanghaitech(tmp_path / 'shanghaitech')}")
    assert [r.label for r in splits.test] == [0, 0, 1, 1, 0]
    assert splits.has_masks and isinstance(splits.test[2].mask, NpyFrame) and splits.test[2].mask.index == 2
    test = VideoDataset(splits.test, InputSpec((SIZE, SIZE)), has_masks=True)
    assert test.raw(2)[1].sum() == 36 and not test.raw(1)[1].any()  # the 6x6 box, at the frame's own size


def test_shanghaitech_refuses_object_arrays_wrong_lengths_and_truncated_files(tmp_path):
    root = _shanghaitech(tmp_path / "shanghaitech")
    labels = root / "testing" / "test_frame_mask" / "01_0014.npy"
    np.save(labels, np.array([0, 1, 0]))
    with pytest.raises(VideoReadError, match=r"01_0014.npy: frame labels of shape \(3,\) but .* has 5 frames"):
        load_data(f"video:shanghaitech:{root}")
    np.save(labels, np.array([{"a": 1}] * 5, dtype=object), allow_pickle=True)
    with pytest.raises(VideoReadError, match="holds Python objects"):
        load_data(f"video:shanghaitech:{root}")
    np.save(labels, np.zeros(5, dtype=np.int64))
    labels.write_bytes(labels.read_bytes()[:-8])
    with pytest.raises(VideoReadError, match="truncated"):
        load_data(f"video:shanghaitech:{root}")


# -- the plain folder layout ------------------------------------------------------------------------
@pytest.mark.parametrize("video_files", [False, True])
def test_folder_layout_of_frame_folders_and_video_files(tmp_path, video_files):
    root = make_video_folder(tmp_path / "videos", n_train=2, n_test=2, frames=16, size=32, video_files=video_files)
    splits = load_data(f"video:folder:{root}")
    assert len(splits.train) == 32 and len(splits.test) == 32 and splits.has_masks
    first = [r for r in splits.test if Path(r.video).name.startswith("test_00")]
    expected = make_video(16, 32, seed=1000, anomaly=(8, 12))[1]
    assert [r.label for r in first] == expected
    assert first[9].mask_path is not None and first[0].mask_path is None  # no mask file: all-normal
    suffix = "test_00.avi#000009" if video_files else "test_00/0009.png"
    assert first[9].path.endswith(suffix)


def test_folder_layout_labels_from_masks_without_a_label_file(tmp_path):
    root = make_video_folder(tmp_path / "videos", n_train=1, n_test=1, frames=12, size=32)
    (root / "test_labels" / "test_00.txt").unlink()
    splits = load_data(f"video:folder:{root}")
    assert [r.label for r in splits.test] == make_video(12, 32, seed=1000, anomaly=(6, 9))[1]


def test_folder_layout_without_test_labels_is_unlabelled(tmp_path):
    root = make_video_folder(tmp_path / "videos", n_train=1, n_test=1, frames=8, size=32, masks=False)
    (root / "test_labels" / "test_00.txt").unlink()
    splits = load_data(f"video:folder:{root}")
    assert all(r.label is None for r in splits.test) and not splits.has_masks


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda root: (root / "test_labels" / "test_00.txt").write_text("0\n1\n"),
            r"test_00.txt: 2 labels but .* has 8 frames",
        ),
        (
            lambda root: (root / "test_labels" / "test_00.txt").write_text("0\n" * 7 + "yes\n"),
            r"test_00.txt: line 8 is 'yes'",
        ),
        (lambda root: (root / "train" / "empty").mkdir(), r"train/empty: frame folder has no images"),
        (
            lambda root: (root / "train" / "broken.avi").write_bytes(b"not a video at all" * 10),
            r"broken.avi: cannot open video",
        ),
        (
            lambda root: (root / "test_masks" / "test_00" / "0099.png").write_bytes(
                (root / "test_masks" / "test_00" / "0004.png").read_bytes()
            ),
            r"0099.png: no frame named 0099",
        ),
    ],
)
def test_bad_input_gets_a_one_line_error_naming_the_file(tmp_path, damage, message):
    root = make_video_folder(tmp_path / "videos", n_train=1, n_test=1, frames=8, size=32)
    damage(root)
    with pytest.raises(VideoReadError, match=message) as error:
        load_data(f"video:folder:{root}")
    assert "\n" not in str(error.value)


def test_unknown_layouts_and_missing_folders_are_refused(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(VideoReadError, match="no known video layout"):
        load_data(f"video:{tmp_path / 'nothing'}")
    with pytest.raises(VideoReadError, match="does not exist"):
        load_data(f"video:folder:{tmp_path / 'missing'}")


# -- validation splits: whole videos, never random frames --------------------------------------------
def test_validation_splits_take_whole_videos(tmp_path):
    root = make_video_folder(tmp_path / "videos", n_train=1, n_test=4, frames=8, size=32, masks=False)
    splits = load_data(f"video:folder:{root}", val_split="from_test:0.5", seed=3)
    val_videos, test_videos = {r.video for r in splits.val}, {r.video for r in splits.test}
    assert len(val_videos) == 2 and len(test_videos) == 2 and not val_videos & test_videos
    assert len(splits.val) == 16
    # One training video: the held-out part is its last frames, in one piece.
    splits = load_data(f"video:folder:{root}", val_split="from_train:0.25")
    assert [r.frame_index for r in splits.val] == [6, 7] and [r.frame_index for r in splits.train] == list(range(6))
    assert load_data(f"video:folder:{root}", val_split="none").val == []
    with pytest.raises(ValueError, match="synthetic anomalies are made for images"):
        load_data(f"video:folder:{root}", val_split="synthetic:0.2")


def test_split_videos_is_seeded_and_keeps_one_video_on_each_side(tmp_path):
    root = make_video_folder(tmp_path / "videos", n_train=3, n_test=1, frames=4, size=32)
    records = load_data(f"video:folder:{root}").train
    taken, rest = split_videos(records, 0.9, seed=0)
    assert len({r.video for r in taken}) == 2 and len({r.video for r in rest}) == 1
    assert split_videos(records, 0.9, seed=0) == (taken, rest)
