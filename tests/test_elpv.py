"""The ELPV adapter serves the real solar-cell images shipped by the elpv-dataset package."""

import pytest
from adcore.data import AnomalyDataset, load_data
from adcore.protocols import InputSpec

pytest.importorskip("elpv_dataset")


def test_mono_split_follows_the_documented_rule():
    splits = load_data("elpv:mono")
    # 588 mono cells with defect probability 0, 313 with 1 and 56 with 2/3 (117 unsure ones left out).
    assert len(splits.train) == 441
    assert sum(r.label == 0 for r in splits.test) == 147
    assert sum(r.label == 1 for r in splits.test) == 313 + 56
    assert not splits.has_masks
    assert {r.path for r in splits.train}.isdisjoint(r.path for r in splits.test)


def test_split_depends_on_the_seed_and_cell_type():
    assert load_data("elpv:mono", seed=0).train != load_data("elpv:mono", seed=1).train
    poly = load_data("elpv:poly")
    assert len(poly.train) == 690
    with pytest.raises(ValueError, match="cell type"):
        load_data("elpv:thin-film")


def test_cells_decode_to_rgb_tensors():
    splits = load_data("elpv:mono")
    dataset = AnomalyDataset(splits.test[:2], InputSpec(image_size=(64, 64)))
    item = dataset[0]
    assert item["image"].shape == (3, 64, 64)
    assert item["label"] == 0 or item["label"] == 1
