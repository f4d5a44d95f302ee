"""RoadAnomaly in both released layouts: 2 → anomaly, no void, JPG and WebP frames."""

import json

import numpy as np
import pytest
from adapters_layouts import H, W, label_map, roadanomaly_official, roadanomaly_repackaged

from ood_bench.adapters import get_dataset
from ood_bench.errors import DataNotFoundError, OodBenchError

NAMES = ["animals01_Guiguinto_railway_station_Calves", "cones01_Beeston_MMB_A6_Middle_Street"]


@pytest.mark.parametrize("ext", [".jpg", ".webp"])
def test_official_layout_maps_2_to_anomaly(tmp_path, ext):
    labels = {n: label_map([0, 2], seed=i) for i, n in enumerate(NAMES)}
    images = roadanomaly_official(tmp_path, labels, ext)
    dataset = get_dataset("roadanomaly", tmp_path)
    assert len(dataset) == 2 and [s.name for s in dataset] == NAMES
    for sample in dataset:
        expected = (labels[sample.name] == 2).astype(np.uint8)
        np.testing.assert_array_equal(sample.ood, expected)
        assert sample.ood.dtype == np.uint8 and sample.semantic is None and sample.domain is None
        assert sample.image.shape == (H, W, 3) and sample.image.dtype == np.uint8
        if ext == ".webp":  # lossless: exact pixels
            np.testing.assert_array_equal(sample.image, images[sample.name])


def test_repackaged_layout_is_already_binary(tmp_path):
    labels = {n: label_map([0, 1], seed=i) for i, n in enumerate(NAMES)}
    roadanomaly_repackaged(tmp_path, labels)
    dataset = get_dataset("roadanomaly", tmp_path)
    assert [s.name for s in dataset] == NAMES
    np.testing.assert_array_equal(dataset[1].ood, labels[NAMES[1]])


def test_default_root_is_found_under_data_root(tmp_path, monkeypatch):
    roadanomaly_official(tmp_path / "RoadAnomaly_jpg", {NAMES[0]: label_map([0, 2])})
    monkeypatch.setenv("OODBENCH_DATA", str(tmp_path))
    assert len(get_dataset("roadanomaly")) == 1


def test_void_value_is_rejected_in_official_labels(tmp_path):
    roadanomaly_official(tmp_path, {NAMES[0]: label_map([0, 2, 255])})
    with pytest.raises(OodBenchError, match=r"roadanomaly.*labels_semantic.png.*unexpected label "
                       r"value\(s\) 255; expected 0 \(background\) or 2"):
        get_dataset("roadanomaly", tmp_path)[0]


def test_1_is_rejected_in_official_labels_but_not_in_repackaged(tmp_path):
    roadanomaly_official(tmp_path / "a", {NAMES[0]: label_map([0, 1])})
    with pytest.raises(OodBenchError, match="unexpected label value"):
        get_dataset("roadanomaly", tmp_path / "a")[0]
    roadanomaly_repackaged(tmp_path / "b", {NAMES[0]: label_map([0, 2])})
    with pytest.raises(OodBenchError, match=r"value\(s\) 2; expected 0 \(in-distribution\)"):
        get_dataset("roadanomaly", tmp_path / "b")[0]


def test_missing_label_names_the_expected_file(tmp_path):
    roadanomaly_official(tmp_path, {n: label_map([0, 2]) for n in NAMES})
    (tmp_path / "frames" / f"{NAMES[1]}.labels" / "labels_semantic.png").unlink()
    with pytest.raises(DataNotFoundError, match=rf"'roadanomaly'.*1 frame\(s\) lack.*{NAMES[1]}"
                       r"\.labels/labels_semantic\.png.*Download: https://datasets-cvlab"):
        get_dataset("roadanomaly", tmp_path)


def test_missing_image_listed_in_frame_list(tmp_path):
    roadanomaly_official(tmp_path, {NAMES[0]: label_map([0, 2])})
    (tmp_path / "frame_list.json").write_text(json.dumps([f"{NAMES[0]}.jpg", "ghost.jpg"]))
    with pytest.raises(DataNotFoundError, match="ghost.jpg"):
        get_dataset("roadanomaly", tmp_path)


def test_wrong_layout_and_bad_frame_list(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(OodBenchError, match="neither frame_list.json nor original/.*expected "
                       "the layout"):
        get_dataset("roadanomaly", tmp_path)
    (tmp_path / "frames").mkdir()
    (tmp_path / "frame_list.json").write_text("{not json")
    with pytest.raises(OodBenchError, match="cannot read .*frame_list.json"):
        get_dataset("roadanomaly", tmp_path)
    (tmp_path / "frame_list.json").write_text('{"a": 1}')
    with pytest.raises(OodBenchError, match="JSON list of image file names"):
        get_dataset("roadanomaly", tmp_path)


def test_corrupt_image_is_reported_with_its_path(tmp_path):
    roadanomaly_official(tmp_path, {NAMES[0]: label_map([0, 2])})
    image = tmp_path / "frames" / f"{NAMES[0]}.jpg"
    image.write_bytes(image.read_bytes()[:40])
    with pytest.raises(OodBenchError, match=rf"roadanomaly.*cannot decode .*{NAMES[0]}\.jpg"):
        get_dataset("roadanomaly", tmp_path)[0]
