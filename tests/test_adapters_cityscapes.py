"""Cityscapes (labelIds → trainIds, labelTrainIds preferred) and Lost and Found (obstacles)."""

import numpy as np
import pytest
from adapters_layouts import H, W, cityscapes_style, label_map, save_label

from ood_bench.adapters import get_dataset
from ood_bench.adapters.labels import CITYSCAPES_TRAIN_IDS
from ood_bench.errors import DataNotFoundError, OodBenchError

#: The official table, typed in independently from cityscapesScripts' labels.py.
OFFICIAL = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
            25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
ALL_IDS = np.arange(34, dtype=np.uint8)


def test_train_id_table_matches_cityscapes_scripts():
    assert CITYSCAPES_TRAIN_IDS == OFFICIAL


def test_label_ids_are_mapped_to_train_ids(tmp_path):
    label = np.resize(ALL_IDS, (H, W))
    images = cityscapes_style(
        tmp_path, "val", {("frankfurt", "frankfurt_000000_000294"): label}, "gtFine",
        "_gtFine_labelIds.png", ("_gtFine_color.png", "_gtFine_instanceIds.png"),
    )
    sample = get_dataset("cityscapes-val", tmp_path)[0]
    expected = np.vectorize(lambda i: OFFICIAL.get(i, 255))(label).astype(np.uint8)
    np.testing.assert_array_equal(sample.semantic, expected)
    np.testing.assert_array_equal(sample.ood, np.where(expected == 255, 255, 0))
    np.testing.assert_array_equal(sample.image, images["frankfurt_000000_000294"])
    assert sample.name == "frankfurt_000000_000294"


def test_label_train_ids_are_preferred(tmp_path):
    cityscapes_style(tmp_path, "train", {("aachen", "aachen_000000_000019"): label_map([7, 26])},
                     "gtFine", "_gtFine_labelIds.png")
    train_ids = label_map([0, 13, 255], seed=5)
    save_label(tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png",
               train_ids)
    np.testing.assert_array_equal(get_dataset("cityscapes-train", tmp_path)[0].semantic, train_ids)


def test_cityscapes_errors(tmp_path):
    cityscapes_style(tmp_path, "val", {("lindau", "lindau_000000_000019"): label_map([7, 34])},
                     "gtFine", "_gtFine_labelIds.png")
    with pytest.raises(OodBenchError, match=r"value\(s\) 34; expected Cityscapes labelIds 0\.\.33"):
        get_dataset("cityscapes-val", tmp_path)[0]
    save_label(tmp_path / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png",
               np.zeros((H + 1, W), np.uint8))
    with pytest.raises(OodBenchError, match=r"is 16×9 but its image is 16×8"):
        get_dataset("cityscapes-val", tmp_path)[0]
    (tmp_path / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DataNotFoundError, match="gtFine/val/lindau/lindau_000000_000019_gtFine_"
                       "labelIds.png.*cityscapes-dataset.com"):
        get_dataset("cityscapes-val", tmp_path)
    with pytest.raises(DataNotFoundError, match=r"missing folder .*leftImg8bit/train'"):
        get_dataset("cityscapes-train", tmp_path)


def test_lost_and_found_objects_are_obstacles_off_road_void(tmp_path):
    label = np.resize(np.arange(44, dtype=np.uint8), (H, W))
    cityscapes_style(
        tmp_path, "test", {("04_Maurener_Weg_8", "04_Maurener_Weg_8_000000_000030"): label},
        "gtCoarse", "_gtCoarse_labelIds.png", ("_gtCoarse_color.png",),
    )
    sample = get_dataset("lostandfound-test", tmp_path)[0]
    expected = np.where(label == 0, 255, np.where(label == 1, 0, 1))
    np.testing.assert_array_equal(sample.ood, expected)
    assert sample.semantic is None
    save_label(tmp_path / "gtCoarse/test/04_Maurener_Weg_8/04_Maurener_Weg_8_000000_000030"
               "_gtCoarse_labelIds.png", label_map([1, 44]))
    with pytest.raises(OodBenchError, match=r"value\(s\) 44; expected Lost and Found labelIds"):
        get_dataset("lostandfound-test", tmp_path)[0]
