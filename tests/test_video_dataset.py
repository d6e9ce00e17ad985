"""Clips: construction (length, stride, first scored frame, the scored frame's label and mask),
decoding (exactly like images; seeks land on the right frame), laziness and the VideoBatch collate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from adcore.batch import VideoBatch
from adcore.data import AnomalyDataset, load_data
from adcore.data.dataset import ImageRecord
from adcore.data.video_dataset import VideoDataset, clip_indices, collate_samples, is_video_dataset
from adcore.data.video_io import FrameReader, cv2_module, probe_video
from adcore.data.video_synthetic import _write_video, make_video, make_video_folder
from adcore.protocols import InputSpec
from torch.utils.data import DataLoader, Subset


@pytest.fixture(scope="module")
def frame_videos(tmp_path_factory):
    return make_video_folder(tmp_path_factory.mktemp("frames") / "videos", n_train=1, n_test=2, frames=20, size=32)


@pytest.fixture(scope="module")
def file_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("files") / "videos"
    return make_video_folder(root, n_train=1, n_test=2, frames=20, size=32, video_files=True)


def test_clip_indices_end_at_the_scored_frame():
    assert clip_indices(10, 4, 3) == [1, 4, 7, 10]
    assert clip_indices(5, 1, 7) == [5]


@pytest.mark.parametrize(("length", "stride"), [(1, 1), (3, 1), (4, 2), (2, 5)])
def test_clips_start_at_the_first_frame_with_a_full_clip(frame_videos, length, stride):
    splits = load_data(f"video:folder:{frame_videos}")
    dataset = VideoDataset(splits.test, InputSpec((16, 16), clip_length=length, frame_stride=stride), has_masks=True)
    first = (length - 1) * stride
    assert len(dataset) == 2 * (20 - first)
    assert [r.frame_index for r in dataset.records[: 20 - first]] == list(range(first, 20))
    item = dataset[0]
    assert item["frames"].shape == (length, 3, 16, 16) and item["frame_index"] == first
    assert torch.equal(item["image"], item["frames"][-1])


def test_a_clip_is_its_frames_and_carries_the_last_frames_ground_truth(frame_videos):
    splits = load_data(f"video:folder:{frame_videos}")
    spec = InputSpec((32, 32), clip_length=3, frame_stride=2)
    dataset = VideoDataset(splits.test, spec, has_masks=True)
    images, labels, masks = make_video(20, 32, seed=1000, anomaly=(10, 15))
    for index in range(len(dataset.records) // 2):
        item = dataset[index]
        scored = item["frame_index"]
        expected = torch.stack([torch.from_numpy(images[i]).permute(2, 0, 1) for i in (scored - 4, scored - 2, scored)])
        assert torch.allclose(item["frames"], spec.normalize(expected))
        assert item["label"] == labels[scored]
        assert torch.equal(item["mask"][0].bool(), torch.from_numpy(masks[scored]))


def test_frame_folders_decode_exactly_like_images(frame_videos):
    """The same file, as a frame of a video and as an image, gives the same input tensor."""
    splits = load_data(f"video:folder:{frame_videos}")
    spec = InputSpec((24, 40))
    video = VideoDataset(splits.test[:5], spec)
    images = AnomalyDataset([ImageRecord(__import__("pathlib").Path(r.path)) for r in splits.test[:5]], spec)
    for i in range(5):
        assert torch.equal(video[i]["image"], images[i]["image"])


def test_seeks_land_on_the_frame_sequential_decoding_gives(tmp_path):
    cv2 = cv2_module()
    images = make_video(60, 32, seed=7)[0]
    path = tmp_path / "clip.avi"
    _write_video(path, images)
    capture, sequential = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        sequential.append(frame[:, :, ::-1].copy())
    capture.release()
    source = probe_video(path)
    assert source.frames == len(sequential) == 60
    reader = FrameReader()
    for index in [59, 3, 4, 40, 0, 58, 10, 11, 12, 30]:  # backwards, forwards, short and long jumps
        assert np.array_equal(np.asarray(reader.frame(source, index)), sequential[index]), index
    with pytest.raises(Exception, match=r"frame 60 out of range \(the video has 60 frames\)"):
        reader.frame(source, 60)


def test_iterating_in_order_decodes_each_frame_once(file_videos):
    splits = load_data(f"video:folder:{file_videos}")
    for length, stride in [(1, 1), (4, 1), (3, 3)]:
        dataset = VideoDataset(splits.test, InputSpec((16, 16), clip_length=length, frame_stride=stride))
        for index in range(len(dataset)):
            dataset[index]
        assert dataset.frames_decoded == 40, (length, stride)  # two videos of 20 frames, never all held
        assert len(dataset._recent) <= (length - 1) * stride + 2


def test_the_engine_collates_clips_into_a_video_batch(file_videos):
    splits = load_data(f"video:folder:{file_videos}")
    dataset = VideoDataset(splits.test, InputSpec((16, 16), clip_length=2, frame_stride=1), has_masks=True)
    batch = next(iter(DataLoader(dataset, batch_size=5, collate_fn=collate_samples)))
    assert isinstance(batch, VideoBatch)
    assert batch.frames.shape == (5, 2, 3, 16, 16) and torch.equal(batch.image, batch.frames[:, -1])
    assert batch.frame_index.tolist() == [1, 2, 3, 4, 5] and batch.label.tolist() == [0] * 5
    assert batch.mask.shape == (5, 1, 16, 16) and batch.path[0].endswith("test_00.avi#000001")
    assert batch.video == [str(file_videos / "test" / "test_00.avi")] * 5
    assert is_video_dataset(Subset(Subset(dataset, [0, 1]), [0]))


def test_video_batches_reach_the_dataloader_workers(file_videos):
    """Open captures are not pickled: each worker opens its own."""
    splits = load_data(f"video:folder:{file_videos}")
    dataset = VideoDataset(splits.test, InputSpec((16, 16)))
    dataset[0]  # a capture is open in this process
    loader = DataLoader(dataset, batch_size=8, num_workers=1, collate_fn=collate_samples)
    scores = torch.cat([batch.image.mean(dim=(1, 2, 3)) for batch in loader])
    assert torch.allclose(scores, torch.stack([dataset[i]["image"].mean() for i in range(len(dataset))]))


def test_a_clip_longer_than_every_video_is_refused(frame_videos):
    splits = load_data(f"video:folder:{frame_videos}")
    with pytest.raises(ValueError, match=r"need videos of at least 21 frames; the longest has 20"):
        VideoDataset(splits.test, InputSpec((16, 16), clip_length=11, frame_stride=2))
