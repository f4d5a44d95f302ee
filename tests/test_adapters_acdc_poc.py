"""ACDC-POC: images rebuilt from .npz differences by uint8 wrap-around, both label conventions,
both label locations, base images under acdc_root, already rebuilt PNG trees, the PNG cache."""

import os
from pathlib import Path

import numpy as np
import pytest
from adapters_layouts import ACDC_IMAGES, H, W, acdc_poc, save_label

from ood_bench.adapters import get_dataset
from ood_bench.adapters.acdc_poc import rebuild
from ood_bench.errors import DataNotFoundError, OodBenchError

GT = Path("gt_trainval", "gt")
QUIRK_GT = Path("rgb_anon_trainvaltest", "gt")
RAW = [0, 1, 7, 26, 33, 100, 124, 255]
#: Hand-written expectations per raw id.
MULTISHIFTSEG = {0: 255, 1: 0, 7: 0, 26: 0, 33: 0, 100: 1, 124: 1, 255: 255}
POC = {0: 255, 1: 255, 7: 0, 26: 0, 33: 0, 100: 1, 124: 1, 255: 255}
TRAIN_IDS = {0: 255, 1: 255, 7: 0, 26: 13, 33: 18, 100: 255, 124: 255, 255: 255}


def raw_label(seed):
    label = np.random.default_rng(seed).choice(np.array(RAW, np.uint8), (H, W))
    label.flat[: len(RAW)] = RAW
    return label


FRAMES = {
    ("fog", "GOPR0475", "GOPR0475_frame_000041_rgb_anon_dog_1"): raw_label(0),
    ("night", "GOPR0351", "GOPR0351_frame_000159_rgb_anon_garbage-bag_2"): raw_label(1),
}


def mapped(label, table):
    return np.vectorize(table.get)(label).astype(np.uint8)


@pytest.mark.parametrize("label_dir", [GT, QUIRK_GT])
def test_rebuilds_images_with_wraparound_and_converts_labels(tmp_path, label_dir):
    images = acdc_poc(tmp_path, FRAMES, label_dir)
    dataset = get_dataset("acdc-poc", tmp_path)
    assert len(dataset) == 2  # the base *_rgb_anon.png images beside the .npz are not frames
    for (cond, _, name), label in FRAMES.items():
        sample = next(s for s in dataset if s.name == name)
        np.testing.assert_array_equal(sample.image, images[name])
        np.testing.assert_array_equal(sample.ood, mapped(label, MULTISHIFTSEG))
        np.testing.assert_array_equal(sample.semantic, mapped(label, TRAIN_IDS))
        assert sample.domain == cond


def test_poc_void_convention(tmp_path):
    acdc_poc(tmp_path, FRAMES, GT)
    sample = get_dataset("acdc-poc", tmp_path, void="poc")[0]
    np.testing.assert_array_equal(sample.ood, mapped(FRAMES[next(iter(FRAMES))], POC))
    with pytest.raises(OodBenchError, match="void='cityscapes'; expected one of multishiftseg"):
        get_dataset("acdc-poc", tmp_path, void="cityscapes")


def test_rebuilt_images_are_cached_once(tmp_path):
    images = acdc_poc(tmp_path, FRAMES, GT)
    dataset = get_dataset("acdc-poc", tmp_path)
    dataset[0]
    cached = sorted(Path(os.environ["OODBENCH_CACHE"]).rglob("*.png"))
    assert [p.name for p in cached] == [f"{dataset.frame_name(0)}.png"]
    assert not any(p.name.startswith(".") for p in cached[0].parent.iterdir())  # no temp files
    mtime = cached[0].stat().st_mtime_ns
    (tmp_path / ACDC_IMAGES / "fog" / "val" / "GOPR0475" /
     "GOPR0475_frame_000041_rgb_anon.png").unlink()  # the cache no longer needs the base image
    np.testing.assert_array_equal(dataset[0].image, images[dataset.frame_name(0)])
    assert cached[0].stat().st_mtime_ns == mtime


def test_base_images_under_acdc_root(tmp_path):
    images = acdc_poc(tmp_path / "poc", FRAMES, GT, base_root=tmp_path / "acdc")
    with pytest.raises(DataNotFoundError, match=r"lack their label or ACDC base image.*"
                       r"GOPR0475_frame_000041_rgb_anon\.png"):
        get_dataset("acdc-poc", tmp_path / "poc")
    dataset = get_dataset("acdc-poc", tmp_path / "poc", acdc_root=tmp_path / "acdc")
    np.testing.assert_array_equal(dataset[0].image, images[dataset.frame_name(0)])


def test_already_rebuilt_png_tree(tmp_path):
    images = acdc_poc(tmp_path, FRAMES, GT, rebuilt=True)
    dataset = get_dataset("acdc-poc", tmp_path)
    assert sorted(s.name for s in dataset) == sorted(images)
    for sample in dataset:
        np.testing.assert_array_equal(sample.image, images[sample.name])


def test_missing_label_and_bad_values(tmp_path):
    acdc_poc(tmp_path, FRAMES, GT)
    label = tmp_path / GT / "fog" / "val" / "GOPR0475" / "GOPR0475_frame_000041_rgb_anon_dog_1.png"
    save_label(label, np.full((H, W), 50, np.uint8))
    with pytest.raises(OodBenchError, match=r"acdc-poc.*unexpected label value\(s\) 50; expected "
                       r"Cityscapes labelIds 0\.\.33, OOD objects 100\.\.124"):
        get_dataset("acdc-poc", tmp_path)[0]
    label.unlink()
    with pytest.raises(DataNotFoundError, match=r"gt_trainval/gt/fog/val/GOPR0475/"
                       r"GOPR0475_frame_000041_rgb_anon_dog_1\.png.*naverlabs"):
        get_dataset("acdc-poc", tmp_path)


@pytest.mark.parametrize(("content", "message"), [
    ({"diff": np.zeros((H, W, 3), np.uint8)}, r"keys \['diff'\]; expected an array named 'img'"),
    ({"img": np.zeros((H, W), np.uint8)}, r"shape \(8, 16\); expected an integer array of the "
     r"base image's shape \(8, 16, 3\)"),
    (None, "cannot read .*npz"),
])
def test_bad_difference_files(tmp_path, content, message):
    acdc_poc(tmp_path, FRAMES, GT)
    npz = next((tmp_path / ACDC_IMAGES).rglob("*.npz"))
    if content is None:
        npz.write_bytes(b"not a zip")
    else:
        np.savez(npz, **content)
    dataset = get_dataset("acdc-poc", tmp_path)
    index = [dataset.frame_name(i) for i in range(2)].index(npz.stem)
    with pytest.raises(OodBenchError, match=message):
        dataset[index]


@pytest.mark.parametrize("dtype", [np.uint8, np.int16])
def test_rebuild_wraps_modulo_256(dtype):
    base = np.array([[[250, 3, 0]]], np.uint8)
    difference = np.array([[[10, -5 if dtype == np.int16 else 251, 0]]]).astype(dtype)
    np.testing.assert_array_equal(rebuild(base, difference, Path("x.npz")), [[[4, 254, 0]]])
