"""Synthetic CG-Aug generation: coherence, output tree, manifest, resumability, CLI."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ood_bench.adapters import get_dataset
from ood_bench.cgaug.generators import SyntheticGenerator, insert_object, synthetic_domain
from ood_bench.cgaug.paste import paste_on_road
from ood_bench.cgaug.pipeline import MANIFEST, generate_dataset, output_paths, read_manifest
from ood_bench.cgaug.prompts import Prompt
from ood_bench.cgaug.sources import SyntheticObjects
from ood_bench.cli.app import main
from ood_bench.errors import OodBenchError


@pytest.fixture(scope="module")
def dataset():
    return get_dataset("synth-cityscapes", length=4)


def test_inserted_object_is_coherent_with_the_pasted_label(dataset):
    rng = np.random.default_rng(3)
    sample = dataset[0]
    pasted = paste_on_road(sample.semantic, SyntheticObjects().draw(rng), rng)
    layout = insert_object(dataset.layout(0), pasted, rng)
    np.testing.assert_array_equal(layout.semantic, pasted.label)
    assert (layout.depth[pasted.mask] == dataset.layout(0).depth[pasted.centre]).all()
    with pytest.raises(OodBenchError, match="synth"):
        SyntheticGenerator().generate(pasted, 0, None)


@pytest.mark.parametrize("weather, time, expected", [
    (None, None, "clear"), ("foggy", "day", "new-city+fog"), ("cloudy", "night", "new-city+night"),
    ("snowy", "night", "new-city+snow+night"), ("clear", "day", "new-city"),
])
def test_synthetic_domain_follows_the_prompt(weather, time, expected):
    assert synthetic_domain(Prompt("", "", weather, time, "Oslo")) == expected


def _files(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def test_generation_writes_a_cityscapes_tree_and_resumes(dataset, tmp_path):
    out = tmp_path / "gen"
    stats = generate_dataset(dataset, SyntheticGenerator(), SyntheticObjects(), out, limit=3)
    assert (stats.written, stats.skipped) == (3, 0)
    first = _files(out)
    records = read_manifest(out)
    assert len(first) == 6 and len(records) == 3
    for index in range(3):
        sample = dataset[index]
        image_path, label_path = output_paths(out, "train", sample.name)
        assert image_path.parent.name == "synth-cityscapes-train"
        assert image_path.name == f"{sample.name}_leftImg8bit.png"
        label = np.asarray(Image.open(label_path))
        image = np.asarray(Image.open(image_path))
        assert image.shape == (64, 128, 3) and label.shape == (64, 128)
        objects = label == 254
        assert objects.any()
        np.testing.assert_array_equal(label[~objects], sample.semantic[~objects])
        record = records[sample.name]
        assert record["object_class"] in ("ball", "chair", "barrel", "bag")
        assert record["iou"] == 1.0 and record["mask_source"] == "exact"
        assert record["domain"] in ("clear", "new-city") or record["domain"].startswith("new-")
        assert "accidentally staying on the road" in record["prompt"]
    # resume: one frame lost (files and a torn manifest line), the others skipped
    image_path, label_path = output_paths(out, "train", dataset[1].name)
    image_path.unlink()
    with open(out / MANIFEST, "a") as handle:
        handle.write('{"frame": "torn')
    stats = generate_dataset(dataset, SyntheticGenerator(), SyntheticObjects(), out, limit=3)
    assert (stats.written, stats.skipped) == (1, 2)
    assert _files(out) == first  # same seed -> byte-identical regeneration
    lines = (out / MANIFEST).read_text().splitlines()
    assert len(read_manifest(out)) == 3 and json.loads(lines[-1])["frame"] == dataset[1].name


def test_anomaly_check_records_scores_and_rejections_are_capped(dataset, tmp_path):
    from ood_bench.baselines import get_method
    from ood_bench.cgaug.filtering import AnomalyCheck, AutoFilter
    from ood_bench.train import load_synthetic_base_model

    model = load_synthetic_base_model()
    check = AnomalyCheck(model, get_method("energy"), quantile=0.5)
    stats = generate_dataset(dataset, SyntheticGenerator(), SyntheticObjects(), tmp_path / "a",
                             filter=AutoFilter(anomaly=check), limit=2)
    for record in stats.records:
        assert record["anomaly_score"] > record["anomaly_reference"]
    # an IoU threshold nothing passes (exact masks have IoU 1): every try rejected, capped
    never = AutoFilter(iou_threshold=1.0)
    stats = generate_dataset(dataset, SyntheticGenerator(), SyntheticObjects(), tmp_path / "b",
                             filter=never, limit=2, max_tries=3)
    assert (stats.written, stats.exhausted, stats.rejected) == (0, 2, 6)
    assert not (tmp_path / "b" / MANIFEST).exists()


def test_cli_augment_synthetic(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["augment", "--generator", "synthetic", "--source-dataset",
                                  "synth-cityscapes", "--out", str(tmp_path), "--limit", "2",
                                  "--quiet"])
    assert result.exit_code == 0, result.output
    assert "written 2" in result.output
    assert len(read_manifest(tmp_path)) == 2


@pytest.mark.parametrize("args, message", [
    (["--generator", "controlnet", "--source-dataset", "synth-cityscapes"], "--controlnet"),
    (["--generator", "controlnet", "--source-dataset", "synth-cityscapes", "--controlnet", "c",
      "--sd", "s", "--sam", "m", "--objects", "ade20k"], "--ade20k-classes"),
    (["--generator", "synthetic", "--source-dataset", "cityscapes"], "synth-"),
    (["--generator", "synthetic", "--source-dataset", "synth-cityscapes", "--objects", "ade20k"],
     "--objects synthetic"),
])
def test_cli_augment_bad_input(tmp_path, args, message):
    result = CliRunner().invoke(main, ["augment", *args, "--out", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output


def test_cli_augment_rejects_a_bad_mapping_file(tmp_path):
    mapping = tmp_path / "map.json"
    mapping.write_text('["not", "an", "object"]')
    result = CliRunner().invoke(main, [
        "augment", "--generator", "controlnet", "--source-dataset", "cityscapes", "--out",
        str(tmp_path / "out"), "--controlnet", "c", "--sd", "s", "--sam", "m",
        "--ade20k-root", str(tmp_path), "--ade20k-classes", "bed",
        "--ade20k-mapping", str(mapping)])
    assert result.exit_code == 2 and "JSON object" in result.output
