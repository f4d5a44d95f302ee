"""CG-Aug with real diffusers/transformers models: tiny random-weight SD + ControlNet and SAM
built from configs (``ood_bench.cgaug.testing``), saved in the released layouts and loaded
offline through the same code path as user weights."""

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ood_bench.adapters import get_dataset
from ood_bench.cgaug.filtering import AutoFilter, SamMasker, box_of, mask_iou
from ood_bench.cgaug.generators import ControlNetGenerator, model_size
from ood_bench.cgaug.paste import Pasted
from ood_bench.cgaug.pipeline import generate_dataset, output_paths, read_manifest
from ood_bench.cgaug.sources import SceneParsingObjects
from ood_bench.cgaug.testing import (
    byte_alphabet,
    save_random_controlnet_pipeline,
    save_random_sam,
)
from ood_bench.cli.app import main
from ood_bench.errors import DataNotFoundError, OodBenchError

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    save_random_controlnet_pipeline(folder, "tiny")
    save_random_sam(folder, "tiny")
    return folder


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def generator(weights):
    return ControlNetGenerator(weights / "controlnet", weights / "sd", steps=2, short_side=64)


def _pasted() -> Pasted:
    label = np.zeros((64, 128), np.uint8)
    label[:20] = 10
    mask = np.zeros((64, 128), bool)
    mask[30:44, 50:66] = True
    label[mask] = 254
    return Pasted(label, mask, "bed", (37, 58))


def test_model_size_rounds_to_multiples_of_64():
    assert model_size(1024, 2048, 512) == (512, 1024)
    assert model_size(64, 128, 512) == (512, 1024)
    assert model_size(375, 1242, 512) == (512, 1664)  # 1695.7 px = 26.49 blocks of 64 -> 26


def test_controlnet_generator_is_seeded_per_sample(generator):
    first = generator.generate(_pasted(), 7)
    again = generator.generate(_pasted(), 7)
    other = generator.generate(_pasted(), 8)
    assert first.image.shape == (64, 128, 3) and first.image.dtype == np.uint8
    np.testing.assert_array_equal(first.image, again.image)
    assert first.prompt == again.prompt
    assert not np.array_equal(first.image, other.image)
    assert first.domain == first.prompt.domain


def test_missing_weights_are_a_clear_error(tmp_path):
    with pytest.raises(DataNotFoundError, match="offline"):
        ControlNetGenerator(tmp_path / "none", tmp_path / "none", steps=1)
    with pytest.raises(DataNotFoundError, match="SAM"):
        SamMasker(tmp_path / "none")


def test_sam_filter_iou_logic(weights):
    masker = SamMasker(weights / "sam")
    image = (np.random.default_rng(0).random((64, 128, 3)) * 255).astype(np.uint8)
    pasted = _pasted().mask
    assert box_of(pasted) == (50, 30, 65, 43)
    sam_mask = masker(image, box_of(pasted))
    assert sam_mask.shape == (64, 128) and sam_mask.dtype == bool
    expected_iou = np.logical_and(sam_mask, pasted).sum() / np.logical_or(sam_mask, pasted).sum()
    for threshold in (expected_iou - 1e-6, expected_iou):
        result = AutoFilter(masker, iou_threshold=threshold)(image, pasted, _pasted().label)
        assert result.iou == pytest.approx(expected_iou)
        assert result.accepted == (expected_iou > threshold)
        np.testing.assert_array_equal(result.ood_mask, sam_mask)
    assert mask_iou(pasted, pasted) == 1.0 and mask_iou(pasted, ~pasted) == 0.0


def _ade_root(tmp_path):
    folder = tmp_path / "ADEChallengeData2016" / "annotations" / "training"
    folder.mkdir(parents=True)
    annotation = np.zeros((40, 60), np.uint8)
    annotation[5:25, 10:40] = 8  # bed
    Image.fromarray(annotation).save(folder / "ADE_train_00000001.png")
    return tmp_path / "ADEChallengeData2016"


def test_whole_generation_with_controlnet_and_sam(weights, generator, tmp_path):
    dataset = get_dataset("synth-cityscapes", length=2)
    objects = SceneParsingObjects(_ade_root(tmp_path), ["bed"])
    out = tmp_path / "out"
    stats = generate_dataset(dataset, generator, objects, out,
                             filter=AutoFilter(SamMasker(weights / "sam"), iou_threshold=-1.0))
    assert stats.written == 2
    for record in read_manifest(out).values():
        assert record["generator"] == "controlnet" and record["mask_source"] == "sam"
        assert record["object_class"] == "bed" and 0 <= record["iou"] <= 1
        image_path, label_path = output_paths(out, "train", record["frame"])
        assert np.asarray(Image.open(image_path)).shape == (64, 128, 3)
        assert set(np.unique(np.asarray(Image.open(label_path)))) <= {*range(19), 254, 255}


def test_cli_augment_controlnet(weights, tmp_path):
    root = _ade_root(tmp_path)
    result = CliRunner().invoke(main, [
        "augment", "--generator", "controlnet", "--source-dataset", "synth-cityscapes",
        "--out", str(tmp_path / "out"), "--ade20k-root", str(root), "--ade20k-classes", "8",
        "--controlnet", str(weights / "controlnet"), "--sd", str(weights / "sd"),
        "--sam", str(weights / "sam"), "--steps", "2", "--short-side", "64", "--limit", "1",
        "--max-tries", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "images/s" in result.output


def test_byte_alphabet_and_presets():
    alphabet = byte_alphabet()
    assert len(set(alphabet)) == 256
    assert alphabet[ord("a")] == "a" and alphabet[ord(" ")] == chr(256 + 32)
    with pytest.raises(OodBenchError, match="tiny, full"):
        save_random_sam("unused", "huge")
