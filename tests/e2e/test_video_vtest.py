"""Real footage through the video path: OpenCV's vtest.avi (795 frames, 768x576, XVID) in the plain
folder layout (a symlink in tmp_path), decoded as clips.

Checks what synthetic MJPG files cannot: a real inter-frame codec's frame count, seeks that land
on the frame sequential decoding gives (backwards and long jumps), and iterating every clip of the
whole video decoding each frame once, with the decoded-frame cache bounded by the clip span.
"""

import numpy as np
import pytest
import torch
from adcore.data import load_data
from adcore.data.video_dataset import VideoDataset
from adcore.data.video_io import FrameReader, cv2_module
from adcore.protocols import InputSpec

pytestmark = pytest.mark.e2e


@pytest.fixture
def vtest_folder(shared_dataset, tmp_path):
    root = tmp_path / "hall"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "train" / "hall.avi").symlink_to(shared_dataset("video") / "vtest.avi")
    (root / "test" / "hall.avi").symlink_to(shared_dataset("video") / "vtest.avi")
    (root / "test_labels").mkdir()
    (root / "test_labels" / "hall.txt").write_text("0\n" * 700 + "1\n" * 95)
    return root


def test_real_footage_decodes_lazily_and_seeks_exactly(vtest_folder):
    splits = load_data(f"video:folder:{vtest_folder}")
    source = splits.test[0].source
    assert source.frames == 795 and len(splits.test) == 795
    assert [r.label for r in splits.test[698:702]] == [0, 0, 1, 1]

    cv2 = cv2_module()
    wanted = {0, 1, 2, 100, 101, 400, 401, 402, 794}
    capture, sequential = cv2.VideoCapture(str(source.path)), {}
    for index in range(795):
        ok, frame = capture.read()
        assert ok, index
        if index in wanted:
            sequential[index] = frame[:, :, ::-1].copy()
    capture.release()
    reader = FrameReader()
    for index in [794, 400, 0, 401, 100, 402, 2, 101, 1]:
        frame = np.asarray(reader.frame(source, index))
        assert frame.shape == (576, 768, 3)
        assert np.array_equal(frame, sequential[index]), f"frame {index} differs from sequential decoding"

    dataset = VideoDataset(splits.test, InputSpec((64, 80), clip_length=3, frame_stride=2))
    assert len(dataset) == 795 - 4 and dataset.records[0].frame_index == 4
    scored = []  # the scored frames so far: clip i holds frames i-4, i-2, i
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["frames"].shape == (3, 3, 64, 80)
        if index >= 2:
            assert torch.equal(item["frames"][1], scored[index - 2])
        scored.append(item["frames"][-1])
        assert len(dataset._recent) <= 6  # the clip's span (5 frames) and one more
    assert dataset.frames_decoded == 795
