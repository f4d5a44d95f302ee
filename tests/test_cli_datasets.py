"""``oodbench datasets`` (listing) and ``oodbench datasets check`` (per-file verification)."""

import numpy as np
import pytest
from adapters_layouts import H, W, label_map, muad, save_label, smiyc
from click.testing import CliRunner

from ood_bench.adapters import SegDataset, register_dataset
from ood_bench.adapters.base import DATASETS, Sample
from ood_bench.cli import main

VAL = {f"validation{i:04d}": label_map([0, 1, 255], seed=i) for i in range(10)}


class Generated(SegDataset):
    """A file-free dataset, like the synthetic ones other modules register."""

    def __len__(self):
        return 3

    def __getitem__(self, index):
        return Sample(np.zeros((H, W, 3), np.uint8), None, None, str(index))


if "test-generated" not in DATASETS:
    register_dataset("test-generated", folder=None, frames=3)(Generated)


def invoke(*args):
    return CliRunner().invoke(main, ["datasets", *args])


def test_listing_shows_found_missing_and_generated(tmp_path):
    smiyc(tmp_path / "dataset_AnomalyTrack", VAL, ".jpg")
    result = invoke("--data-root", str(tmp_path))
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if "│" in line}
    assert rows.keys() >= {"smiyc-ra21-val", "roadanomaly", "test-generated", "muad-val"}
    cells = [c.strip() for c in rows["smiyc-ra21-val"].split("│")[2:5]]
    assert cells == ["yes", "10", "10"]
    assert "frame count differs" in rows["smiyc-ra21"]  # 10 of the expected 110
    assert [c.strip() for c in rows["roadanomaly"].split("│")[2:5]] == ["no", "-", "60"]
    assert [c.strip() for c in rows["test-generated"].split("│")[2:5]] == ["yes", "3", "3"]


def test_listing_reports_a_broken_layout(tmp_path):
    (tmp_path / "RoadAnomaly_jpg" / "images").mkdir(parents=True)
    result = invoke("--data-root", str(tmp_path))
    row = next(line for line in result.output.splitlines() if "│ roadanomaly " in line)
    assert "│ error" in row


def test_check_passes_on_a_complete_split(tmp_path):
    smiyc(tmp_path / "dataset_AnomalyTrack", VAL, ".jpg")
    result = invoke("check", "smiyc-ra21-val", "--data-root", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "smiyc-ra21-val: 10 of 10 frames checked, 0 problem(s)" in result.output


@pytest.mark.parametrize("workers", ["0", "2"])
def test_check_reports_problems_per_file_with_exit_1(tmp_path, workers):
    root = tmp_path / "dataset_AnomalyTrack"
    smiyc(root, dict(list(VAL.items())[:3]), ".jpg")
    save_label(root / "labels_masks" / "validation0001_labels_semantic.png", label_map([0, 7]))
    (root / "images" / "validation0002.jpg").write_bytes(b"\xff\xd8 truncated")
    result = invoke("check", "smiyc-ra21-val", "--root", str(root), "--workers", workers)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "3 frames found, expected 10" in text
    assert "validation0001" in text and "unexpected label value(s) 7" in text
    assert "validation0002" in text and "cannot decode" in text
    assert "3 of 3 frames checked, 3 problem(s)" in text


def test_check_passes_options_and_limit(tmp_path):
    muad(tmp_path / "MUAD", "val", {"000000": label_map([0, 19, 20]), "000001": label_map([20])})
    result = invoke("check", "muad-val", "--data-root", str(tmp_path), "-o", "ood_ids=[19]",
                    "--limit", "1")
    assert result.exit_code == 1  # 2 frames, 492 expected
    assert "1 of 2 frames checked, 1 problem(s)" in " ".join(result.output.split())


@pytest.mark.parametrize(("args", "message"), [
    (["check", "smiyc-ra21-val", "--data-root", "/nonexistent"], "root folder '/nonexistent/"
     "dataset_AnomalyTrack' does not exist"),
    (["check", "smiyc-ra21-vl"], "unknown dataset 'smiyc-ra21-vl'. Did you mean"),
    (["check", "muad-val", "-o", "ood_ids"], "'ood_ids' is not KEY=VALUE"),
    (["check", "muad-val", "--root", ".", "-o", "colour=red"], "takes no option colour"),
])
def test_check_input_errors_exit_2_without_traceback(args, message):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_check_wrong_layout_and_missing_label_exit_2(tmp_path):
    (tmp_path / "images").mkdir()
    result = invoke("check", "roadanomaly", "--root", str(tmp_path))
    assert result.exit_code == 2
    assert "neither frame_list.json nor original/" in result.output
    assert "Download: https://datasets-cvlab.epfl.ch" in " ".join(result.output.split())
    muad(tmp_path / "MUAD", "val", {"000000": label_map([0])})
    (tmp_path / "MUAD/val/leftLabel/000000_leftLabel.png").unlink()
    result = invoke("check", "muad-val", "--data-root", str(tmp_path))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "lack their leftLabel" in result.output
