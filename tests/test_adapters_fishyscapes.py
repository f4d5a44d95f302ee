"""Fishyscapes L&F (masks + LAF images) and Static (clipped overlays on Cityscapes val)."""

import numpy as np
import pytest
from adapters_layouts import H, W, fishyscapes_laf, fishyscapes_static, label_map

from ood_bench.adapters import get_dataset
from ood_bench.errors import DataNotFoundError, OodBenchError

LAF = {
    ("test", "04_Maurener_Weg_8_000000_000030"): label_map([0, 1, 255], seed=1),
    ("train", "13_Elly_Beinhorn_Str_000001_000110"): label_map([0, 255], seed=2),
}


def test_fs_laf_reads_masks_and_lost_and_found_images(tmp_path):
    images = fishyscapes_laf(tmp_path / "fishyscapes_lostandfound", tmp_path / "lostandfound", LAF)
    dataset = get_dataset("fs-laf-val", data_root=tmp_path)  # images found beside the root
    assert [s.name for s in dataset] == [
        "0000_04_Maurener_Weg_8_000000_000030", "0001_13_Elly_Beinhorn_Str_000001_000110"
    ]
    for sample, ((_, laf_id), label) in zip(dataset, LAF.items(), strict=True):
        np.testing.assert_array_equal(sample.image, images[laf_id])
        np.testing.assert_array_equal(sample.ood, label)


def test_fs_laf_errors(tmp_path):
    fishyscapes_laf(tmp_path / "masks", tmp_path / "laf", LAF)
    with pytest.raises(DataNotFoundError, match=r"Lost and Found images not found.*laf_root"):
        get_dataset("fs-laf-val", tmp_path / "masks")
    (tmp_path / "laf" / "leftImg8bit" / "test" / "04_Maurener_Weg_8" /
     "04_Maurener_Weg_8_000000_000030_leftImg8bit.png").unlink()
    with pytest.raises(DataNotFoundError, match=r"lack their Lost and Found image.*leftImg8bit/"
                       r"train/04_Maurener_Weg_8/04_Maurener_Weg_8_000000_000030_leftImg8bit"):
        get_dataset("fs-laf-val", tmp_path / "masks", laf_root=tmp_path / "laf")
    (tmp_path / "masks" / "0000_stray_labels.png").write_bytes(b"")
    with pytest.raises(OodBenchError, match="0000_stray_labels.png' is not named"):
        get_dataset("fs-laf-val", tmp_path / "masks", laf_root=tmp_path / "laf")


def test_fs_static_adds_overlay_with_clipping(tmp_path):
    overlay = np.zeros((H, W, 3), np.int16)
    overlay[0] = 300  # saturates
    overlay[1] = -300  # clips at 0
    overlay[2] = 7
    cs_id = "frankfurt_000000_000294"
    label = label_map([0, 1, 255])
    bases = fishyscapes_static(
        tmp_path / "fishyscapes_static", tmp_path / "cityscapes", {cs_id: label}, {cs_id: overlay}
    )
    sample = get_dataset("fs-static-val", data_root=tmp_path)[0]
    base = bases[cs_id].astype(int)
    assert sample.name == f"0000_{cs_id}"
    assert (sample.image[0] == 255).all() and (sample.image[1] == 0).all()
    np.testing.assert_array_equal(sample.image[2], np.minimum(base[2] + 7, 255))
    np.testing.assert_array_equal(sample.image[3:], bases[cs_id][3:])
    np.testing.assert_array_equal(sample.ood, label)


def test_fs_static_errors(tmp_path):
    cs_id = "lindau_000001_000019"
    overlays = {cs_id: np.zeros((H, W + 1, 3), np.uint8)}
    fishyscapes_static(tmp_path / "fs", tmp_path / "cs", {cs_id: label_map([0, 1])}, overlays)
    with pytest.raises(DataNotFoundError, match=r"Cityscapes val base image.*cityscapes/"
                       r"leftImg8bit/val/lindau/lindau_000001_000019_leftImg8bit\.png"):
        get_dataset("fs-static-val", tmp_path / "fs")
    dataset = get_dataset("fs-static-val", tmp_path / "fs", cityscapes_root=tmp_path / "cs")
    with pytest.raises(OodBenchError, match=r"overlay .* has shape \(8, 17, 3\); expected the "
                       r"shape \(8, 16, 3\)"):
        dataset[0]
    (tmp_path / "fs" / f"0000_{cs_id}_labels.png").unlink()
    with pytest.raises(DataNotFoundError, match=f"0000_{cs_id}_labels.png"):
        get_dataset("fs-static-val", tmp_path / "fs", cityscapes_root=tmp_path / "cs")
