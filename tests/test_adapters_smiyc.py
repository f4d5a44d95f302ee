"""SMIYC RoadAnomaly21 (JPG) and RoadObstacle21 (WebP): splits, hidden test labels, dotted ids."""

import numpy as np
import pytest
from adapters_layouts import label_map, save_label, smiyc

from ood_bench.adapters import get_dataset
from ood_bench.errors import DataNotFoundError, OodBenchError

RO21 = {
    "validation_1": label_map([0, 1, 255], seed=1),
    "validation_12": label_map([0, 255], seed=2),
    "curvy-street_inliner_hubcap_5": None,
    "darkasphalt_axestump_2": None,
    "snowstorm1_00_16_02.578": None,
    "snowstorm2_00_01_03.101": None,
    "driveway_night_3": None,
}
RA21 = {
    "validation0000": label_map([0, 1, 255], seed=3),
    "validation0009": label_map([0, 1], seed=4),
    "airplane0000": None,
    "boat_trailer0003": None,
}


@pytest.fixture
def ro21(tmp_path):
    images = smiyc(tmp_path / "dataset_ObstacleTrack", RO21, ".webp")
    return tmp_path / "dataset_ObstacleTrack", images


@pytest.fixture
def ra21(tmp_path):
    smiyc(tmp_path / "dataset_AnomalyTrack", RA21, ".jpg")
    return tmp_path / "dataset_AnomalyTrack"


@pytest.mark.parametrize(("name", "expected"), [
    ("smiyc-ro21", sorted(RO21)),
    ("smiyc-ro21-val", ["validation_1", "validation_12"]),
    ("smiyc-ro21-test", ["curvy-street_inliner_hubcap_5", "darkasphalt_axestump_2"]),
    ("smiyc-ro21-night", ["driveway_night_3"]),
    ("smiyc-ro21-snowstorm", ["snowstorm1_00_16_02.578", "snowstorm2_00_01_03.101"]),
])
def test_ro21_splits_select_scenes(ro21, name, expected):
    dataset = get_dataset(name, ro21[0])
    assert [dataset.frame_name(i) for i in range(len(dataset))] == expected


def test_ro21_labels_images_and_domains(ro21):
    root, images = ro21
    samples = {s.name: s for s in get_dataset("smiyc-ro21", root)}
    for fid, label in RO21.items():
        sample = samples[fid]
        np.testing.assert_array_equal(sample.image, images[fid])  # lossless WebP
        if label is None:
            assert sample.ood is None
        else:
            np.testing.assert_array_equal(sample.ood, label)
        assert sample.semantic is None
    assert samples["snowstorm1_00_16_02.578"].domain == "snow"
    assert samples["driveway_night_3"].domain == "night"
    assert samples["validation_1"].domain is None


@pytest.mark.parametrize(("name", "count"), [
    ("smiyc-ra21", 4), ("smiyc-ra21-val", 2), ("smiyc-ra21-test", 2),
])
def test_ra21_splits(ra21, name, count):
    dataset = get_dataset(name, ra21)
    assert len(dataset) == count
    for sample in dataset:
        assert (sample.ood is None) == (RA21[sample.name] is None)
        if sample.ood is not None:
            np.testing.assert_array_equal(sample.ood, RA21[sample.name])
        assert sample.domain is None


def test_color_decoys_are_not_frames_or_labels(ra21):
    dataset = get_dataset("smiyc-ra21-val", ra21)
    assert all(not s.name.endswith("_color") for s in dataset)
    assert set(np.unique(dataset[0].ood)) <= {0, 1, 255}


def test_val_holds_only_labelled_validation_frames(ra21):
    (ra21 / "labels_masks" / "validation0009_labels_semantic.png").unlink()
    assert [s.name for s in get_dataset("smiyc-ra21-val", ra21)] == ["validation0000"]
    assert get_dataset("smiyc-ra21", ra21)[3].ood is None  # still a frame of the full set


def test_missing_folder_and_unexpected_value(tmp_path, ra21):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match=r"missing folder .*empty/images'; expected the "
                       r"layout <root>/images/<fid>\.jpg"):
        get_dataset("smiyc-ra21", tmp_path / "empty")
    save_label(ra21 / "labels_masks" / "validation0000_labels_semantic.png", label_map([0, 2]))
    with pytest.raises(OodBenchError, match=r"unexpected label value\(s\) 2; expected 0"):
        get_dataset("smiyc-ra21-val", ra21)[0]


def test_bad_track_or_subset():
    from ood_bench.adapters.smiyc import SegmentMeIfYouCan

    with pytest.raises(OodBenchError, match="track='lane'"):
        SegmentMeIfYouCan(".", track="lane")
    with pytest.raises(OodBenchError, match="subset='night'; expected one of all, val, test$"):
        SegmentMeIfYouCan(".", track="anomaly", subset="night")
