"""Data sources (MVTec and folder layouts, validation splits) and the torch Dataset."""

from pathlib import Path

import numpy as np
import pytest
import torch
from adcore.data import AnomalyDataset, ImageRecord, collate, load_data
from adcore.protocols import InputSpec
from helpers import anomalous_image, normal_image, save_png


def _names(records):
    return [(r.path.parent.name, r.path.name) for r in records]


# -- MVTec ---------------------------------------------------------------------------------
def test_mvtec_records_labels_and_masks(mvtec_root):
    splits = load_data(f"mvtec:{mvtec_root}")
    assert splits.name == "mvtec:category"
    assert splits.has_masks
    assert _names(splits.train) == [("good", f"{i:03d}.png") for i in range(12)]
    assert all(r.label == 0 and r.mask_path is None for r in splits.train)

    assert _names(splits.test) == [("good", f"{i:03d}.png") for i in range(4)] + [
        ("scratch", f"{i:03d}.png") for i in range(4)
    ]
    good, bad = splits.test[:4], splits.test[4:]
    assert all(r.label == 0 and r.mask_path is None and r.defect_type == "good" for r in good)
    for record in bad:
        assert record.label == 1 and record.defect_type == "scratch"
        assert record.mask_path == mvtec_root / "ground_truth" / "scratch" / f"{record.path.stem}_mask.png"
    assert splits.val == splits.test  # default: same_as_test


def test_a_bare_path_is_recognised_as_mvtec(mvtec_root):
    splits = load_data(str(mvtec_root))
    assert splits.name == "mvtec:category" and splits.has_masks and len(splits.test) == 8


def test_missing_mvtec_mask_names_the_image(mvtec_root):
    (mvtec_root / "ground_truth" / "scratch" / "002_mask.png").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_data(f"mvtec:{mvtec_root}")
    assert str(mvtec_root / "test" / "scratch" / "002.png") in str(info.value)


def test_not_an_mvtec_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an MVTec AD category"):
        load_data(f"mvtec:{tmp_path}")


# -- folder layout --------------------------------------------------------------------------
@pytest.fixture
def folder_root(tmp_path):
    for i in range(10):
        save_png(tmp_path / "normal" / f"n{i}.png", normal_image(i))
    for i in range(3):
        image, mask = anomalous_image(i)
        save_png(tmp_path / "abnormal" / f"a{i}.png", image)
        # both documented mask names: same stem, or stem + "_mask"
        save_png(tmp_path / "masks" / (f"a{i}_mask.png" if i % 2 else f"a{i}.png"), mask)
    return tmp_path


def _folder_spec(root, **extra):
    options = {"normal": root / "normal", "abnormal": root / "abnormal", "mask": root / "masks", **extra}
    return "folder:" + ",".join(f"{k}={v}" for k, v in options.items())


def test_folder_layout(folder_root):
    splits = load_data(_folder_spec(folder_root))
    assert splits.has_masks and splits.name == "folder:normal"
    test_normal = [r for r in splits.test if r.label == 0]
    abnormal = [r for r in splits.test if r.label == 1]
    assert len(test_normal) == 2 and len(splits.train) == 8  # 20 % of the normals held out
    assert not {r.path for r in test_normal} & {r.path for r in splits.train}
    assert {r.path for r in test_normal} | {r.path for r in splits.train} == set((folder_root / "normal").glob("*.png"))
    assert [r.path.name for r in abnormal] == ["a0.png", "a1.png", "a2.png"]
    assert [r.mask_path.name for r in abnormal] == ["a0.png", "a1_mask.png", "a2.png"]
    assert load_data(_folder_spec(folder_root)).test == splits.test  # seeded: repeatable


def test_folder_missing_mask_names_the_image(folder_root):
    (folder_root / "masks" / "a1_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"a1\.png: no mask"):
        load_data(_folder_spec(folder_root))


def test_folder_normal_only_and_separate_normal_test(folder_root):
    only = load_data(f"folder:normal={folder_root / 'normal'}")
    assert len(only.train) == 10 and only.test == [] and only.val == [] and not only.has_masks
    save_png(folder_root / "normal_test" / "t0.png", normal_image(77))
    separate = load_data(_folder_spec(folder_root, normal_test=folder_root / "normal_test"))
    assert len(separate.train) == 10
    assert [r.path.name for r in separate.test if r.label == 0] == ["t0.png"]


def test_folder_needs_normal_and_valid_options(folder_root):
    with pytest.raises(ValueError, match="normal=DIR"):
        load_data(f"folder:abnormal={folder_root / 'abnormal'}")
    with pytest.raises(ValueError, match="key=value"):
        load_data(f"folder:{folder_root / 'normal'}")
    with pytest.raises(ValueError, match="unknown data source"):
        load_data("nosuchkind:whatever")


# -- validation splits -----------------------------------------------------------------------
def test_val_split_same_as_test_and_none(mvtec_root):
    same = load_data(f"mvtec:{mvtec_root}", val_split="same_as_test")
    assert same.val == same.test and len(same.test) == 8
    none = load_data(f"mvtec:{mvtec_root}", val_split="none")
    assert none.val == [] and len(none.test) == 8 and len(none.train) == 12


def test_val_split_from_test_is_stratified_and_disjoint(mvtec_root):
    splits = load_data(f"mvtec:{mvtec_root}", val_split="from_test:0.5")
    assert sorted(r.label for r in splits.val) == [0, 0, 1, 1]
    assert sorted(r.label for r in splits.test) == [0, 0, 1, 1]
    assert not {r.path for r in splits.val} & {r.path for r in splits.test}
    assert len({r.path for r in splits.val} | {r.path for r in splits.test}) == 8
    assert len(splits.train) == 12
    assert load_data(f"mvtec:{mvtec_root}", val_split="from_test:0.5").val == splits.val  # seeded


def test_val_split_from_train_holds_out_normals(mvtec_root):
    splits = load_data(f"mvtec:{mvtec_root}", val_split="from_train:0.2")
    assert len(splits.val) == 2 and len(splits.train) == 10  # round(12 * 0.2)
    assert all(r.label == 0 for r in splits.val)
    assert not {r.path for r in splits.val} & {r.path for r in splits.train}
    assert len(splits.test) == 8


def test_unknown_val_split(mvtec_root):
    with pytest.raises(ValueError, match="unknown val_split"):
        load_data(f"mvtec:{mvtec_root}", val_split="random")


# -- AnomalyDataset ----------------------------------------------------------------------------
SPEC = InputSpec(image_size=(24, 40), mean=(0.5, 0.25, 0.75), std=(0.5, 0.2, 0.25))


def test_dataset_shapes_dtypes_and_masks(mvtec_root):
    splits = load_data(f"mvtec:{mvtec_root}")
    dataset = AnomalyDataset(splits.test, SPEC, has_masks=True)
    assert len(dataset) == 8
    normal, anomalous = dataset[0], dataset[7]
    assert normal["image"].shape == (3, 24, 40) and normal["image"].dtype == torch.float32
    assert normal["mask"].shape == (1, 24, 40) and normal["mask"].dtype == torch.float32
    assert normal["mask"].sum() == 0 and normal["label"] == 0
    assert anomalous["label"] == 1
    assert set(anomalous["mask"].unique().tolist()) == {0.0, 1.0}  # nearest resize keeps it binary
    # The 14x14 patch of a 64x64 image is ~ (14/64)^2 of the resized mask.
    assert anomalous["mask"].mean().item() == pytest.approx((14 / 64) ** 2, rel=0.25)
    assert anomalous["path"] == str(splits.test[7].path)

    batch = collate([dataset[i] for i in (0, 5, 7)])
    assert batch.image.shape == (3, 3, 24, 40)
    assert batch.label.tolist() == [0, 1, 1]
    assert batch.mask.shape == (3, 1, 24, 40)

    no_masks = AnomalyDataset(splits.test, SPEC, has_masks=False)
    assert no_masks[7]["mask"] is None
    assert collate([no_masks[0], no_masks[7]]).mask is None


def test_dataset_normalisation(tmp_path):
    colour = (128, 64, 255)
    save_png(tmp_path / "c.png", np.full((10, 10, 3), colour, dtype=np.uint8))
    dataset = AnomalyDataset([ImageRecord(tmp_path / "c.png")], SPEC)
    image = dataset[0]["image"]
    for channel, value in enumerate(colour):
        expected = (value / 255 - SPEC.mean[channel]) / SPEC.std[channel]
        assert torch.allclose(image[channel], torch.tensor(expected), atol=1e-5)
    pixels, mask = dataset.raw(0)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 24, 40) and mask is None
    assert torch.allclose(dataset.normalize(pixels), image)
    # unknown labels stay unknown through the batch
    item = dataset[0]
    assert item["label"] == -1 and collate([item]).label is None


def test_dataset_cache_decodes_once(tmp_path):
    path = save_png(tmp_path / "x.png", normal_image(0))
    dataset = AnomalyDataset([ImageRecord(path)], SPEC, cache=True)
    first = dataset[0]["image"]
    path.unlink()
    assert torch.equal(dataset[0]["image"], first)
    uncached = AnomalyDataset([ImageRecord(save_png(tmp_path / "y.png", normal_image(0)))], SPEC)
    uncached[0]
    (tmp_path / "y.png").unlink()
    with pytest.raises(ValueError, match="y.png"):
        uncached[0]


def test_empty_dataset_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        AnomalyDataset([], SPEC)


def test_no_training_images_is_an_error(tmp_path):
    (tmp_path / "train" / "good").mkdir(parents=True)
    (tmp_path / "test").mkdir()
    with pytest.raises(ValueError, match="no training images"):
        load_data(f"mvtec:{tmp_path}")
    Path(tmp_path / "empty_normal").mkdir()
    with pytest.raises(ValueError, match="no normal images"):
        load_data(f"folder:normal={tmp_path / 'empty_normal'}")
