"""The shared adapter machinery: decoding, label tables, the registry, torch compatibility."""

import pickle

import numpy as np
import pytest
import torch
from adapters_layouts import H, W, label_map, random_image, roadanomaly_official, save_image
from PIL import Image

from ood_bench.adapters import Sample, dataset_info, default_root, get_dataset, list_datasets
from ood_bench.adapters.base import sample_problems
from ood_bench.adapters.io import read_image, read_label, read_npz_array
from ood_bench.adapters.labels import LabelMap
from ood_bench.errors import DataNotFoundError, OodBenchError, UnknownNameError

ALL = {"acdc-poc", "cityscapes-train", "cityscapes-val", "fs-laf-val", "fs-static-val",
       "lostandfound-test", "muad-train", "muad-val", "muad-test-id", "muad-test-ood",
       "roadanomaly", "smiyc-ra21", "smiyc-ra21-val", "smiyc-ro21", "smiyc-ro21-val",
       "smiyc-ro21-night", "smiyc-ro21-snowstorm"}


def test_every_required_dataset_is_registered_with_its_metadata():
    assert ALL <= set(list_datasets())
    info = dataset_info("roadanomaly")
    assert info.frames == 60 and info.folders[0] == "RoadAnomaly_jpg"
    assert "RoadAnomaly_jpg.zip" in info.download
    assert list_datasets("smiyc-ra21*") == ["smiyc-ra21", "smiyc-ra21-test", "smiyc-ra21-val"]


def test_default_root_prefers_an_existing_alternative_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("OODBENCH_DATA", str(tmp_path))
    assert default_root("roadanomaly") == tmp_path / "RoadAnomaly_jpg"
    (tmp_path / "road_anomaly").mkdir()
    assert default_root("roadanomaly") == tmp_path / "road_anomaly"
    assert default_root("roadanomaly", data_root=tmp_path / "x") == tmp_path / "x/RoadAnomaly_jpg"


def test_get_dataset_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"dataset 'smiyc-ra21-val': root folder .*nowhere"
                       r".* does not exist.*'dataset_AnomalyTrack'.*Download: https://zenodo"):
        get_dataset("smiyc-ra21-val", tmp_path / "nowhere")
    with pytest.raises(UnknownNameError, match="Did you mean 'roadanomaly'"):
        get_dataset("roadanomally")
    with pytest.raises(OodBenchError, match=r"'acdc-poc' takes no option colour; valid options: "
                       r"acdc_root, void"):
        get_dataset("acdc-poc", tmp_path, colour=1)
    with pytest.raises(DataNotFoundError, match=r"no frames found under .*expected the layout"):
        (tmp_path / "original").mkdir(), (tmp_path / "labels").mkdir()
        get_dataset("roadanomaly", tmp_path)


def test_read_image_drops_alpha_and_expands_grey(tmp_path):
    rgba = random_image(0, (H, W, 4))
    save_image(tmp_path / "a.png", rgba, "RGBA")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba[..., :3])
    save_image(tmp_path / "a.webp", rgba, "RGBA")
    np.testing.assert_array_equal(read_image(tmp_path / "a.webp"), rgba[..., :3])
    grey = random_image(1, (H, W))
    save_image(tmp_path / "g.png", grey)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.stack([grey] * 3, -1))
    Image.fromarray(grey.astype(np.uint16) * 200).save(tmp_path / "deep.png")
    with pytest.raises(OodBenchError, match="deep.png' is a I;16 .*expected an 8-bit RGB"):
        read_image(tmp_path / "deep.png")
    with pytest.raises(DataNotFoundError, match="missing file .*nope.png"):
        read_image(tmp_path / "nope.png")


def test_read_label_modes(tmp_path):
    label = label_map([0, 1, 255])
    Image.fromarray(np.stack([label] * 3, -1)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_label(tmp_path / "rgb.png"), label)
    palette = Image.fromarray(label, "P")  # indices are the ids, colours are irrelevant
    palette.putpalette(random_image(4, (256 * 3,)).tolist())
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_label(tmp_path / "p.png"), label)
    Image.fromarray(label.astype(np.uint16) * 200).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(read_label(tmp_path / "deep.png"), label.astype(np.uint16) * 200)
    save_image(tmp_path / "color.png", random_image(3))
    with pytest.raises(OodBenchError, match="colour image; .*_color visualisation"):
        read_label(tmp_path / "color.png")


def test_label_map_rejects_unknown_and_out_of_range_values():
    table = LabelMap({0: 0, 2: 1}, "0 or 2")
    np.testing.assert_array_equal(table(np.array([[0, 2]], np.uint8), "x"), [[0, 1]])
    with pytest.raises(OodBenchError, match=r"'x' holds unexpected label value\(s\) 1, 3; "
                       r"expected 0 or 2"):
        table(np.array([[0, 1, 3]], np.uint8), "x")
    with pytest.raises(OodBenchError, match="outside 0..255 .*max 300"):
        table(np.array([[0, 300]], np.uint16), "x")
    np.testing.assert_array_equal(table(np.array([[2]], np.uint16), "x"), [[1]])
    with pytest.raises(OodBenchError, match=r"shape \(2,\); expected an H×W"):
        table(np.array([0, 2], np.uint8), "x")


def test_read_npz_array_errors(tmp_path):
    np.savez(tmp_path / "a.npz", img=np.ones(3))
    np.testing.assert_array_equal(read_npz_array(tmp_path / "a.npz", "img"), np.ones(3))
    with pytest.raises(OodBenchError, match=r"keys \['img'\]; expected an array named 'rgb'"):
        read_npz_array(tmp_path / "a.npz", "rgb")
    with pytest.raises(DataNotFoundError, match="b.npz"):
        read_npz_array(tmp_path / "b.npz", "rgb")


def test_sample_problems():
    image = np.zeros((H, W, 3), np.uint8)
    good = np.zeros((H, W), np.uint8)
    assert sample_problems(Sample(image, good, good, "a")) == []
    bad = good.copy()
    bad[0, 0] = 7
    assert sample_problems(Sample(image, bad, None, "a")) == ["ood holds unexpected values [7]"]
    assert sample_problems(Sample(image, None, good[:2], "a")) == [
        "semantic is uint8 of shape (2, 16), expected uint8 of shape (8, 16)"
    ]
    assert "expected H×W×3 uint8" in sample_problems(Sample(image[..., 0], None, None, "a"))[0]


def test_sample_pickles_through_tensors_and_back():
    sample = Sample(random_image(0), label_map([0, 1]), None, "a.b", "fog")
    copy = pickle.loads(pickle.dumps(sample))
    np.testing.assert_array_equal(copy.image, sample.image)
    np.testing.assert_array_equal(copy.ood, sample.ood)
    assert isinstance(copy.image, np.ndarray) and copy.image.dtype == np.uint8
    assert (copy.semantic, copy.name, copy.domain) == (None, "a.b", "fog")


@pytest.mark.parametrize("workers", [0, 2])
def test_works_as_a_torch_dataset(tmp_path, workers):
    labels = {f"animals{i:02d}_x": label_map([0, 2], seed=i) for i in range(3)}
    roadanomaly_official(tmp_path, labels, ".webp")
    dataset = get_dataset("roadanomaly", tmp_path)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)
    samples = list(loader)
    assert [s.name for s in samples] == list(labels)
    for sample in samples:
        np.testing.assert_array_equal(sample.ood, labels[sample.name] // 2)
    with pytest.raises(IndexError):
        dataset[3]
    assert dataset.check(0) == []
