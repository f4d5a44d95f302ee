"""``oodbench check``: golden files, drift detection (exit 1), --update, bad input (exit 2)."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from runner_helpers import WIDTH, tiny_checkpoint

from ood_bench.cli import main
from ood_bench.golden import Difference, compare, failed


def invoke(args):
    result = CliRunner().invoke(main, args)
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture
def golden(tmp_path):
    """A golden file with a config but no numbers yet, bootstrapped with --update."""
    checkpoint = tiny_checkpoint(tmp_path / "tiny.safetensors")
    path = tmp_path / "golden.json"
    path.write_text(json.dumps({
        "format": "oodbench-golden", "version": 1,
        "config": {"methods": ["msp", "energy"], "datasets": ["synth-roadanomaly"],
                   "model": "deeplabv3plus-small", "checkpoint": str(checkpoint),
                   "model_options": {"width": WIDTH}, "limit": 3, "seed": 0},
        "results": [],
    }))
    result = invoke(["check", "--golden", str(path), "--update"])
    assert result.exit_code == 0, result.output
    assert "updated" in result.output and "new" in result.output
    return path


def test_update_records_numbers_and_check_passes(golden, tmp_path):
    data = json.loads(golden.read_text())
    assert [(r["method"], r["dataset"]) for r in data["results"]] == [
        ("msp", "synth-roadanomaly"), ("energy", "synth-roadanomaly")]
    assert all(0 <= r["auroc"] <= 1 and "miou" in r for r in data["results"])
    result = invoke(["check", "--golden", str(golden), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "OK: 10/10 numbers within" in result.output
    # reading results instead of recomputing
    result = invoke(["check", "--golden", str(golden), "--results", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output


def test_drift_exits_1_with_a_diff_table_and_tolerance_can_absorb_it(golden):
    data = json.loads(golden.read_text())
    data["results"][1]["ap"] += 0.01
    golden.write_text(json.dumps(data))
    result = invoke(["check", "--golden", str(golden)])
    assert result.exit_code == 1, result.output
    assert "DRIFT: 9/10" in result.output and "energy" in result.output
    assert "-0.01" in result.output  # actual - golden
    assert invoke(["check", "--golden", str(golden), "--atol", "0.02"]).exit_code == 0
    # --update rewrites the number and says what changed
    result = invoke(["check", "--golden", str(golden), "--update"])
    assert result.exit_code == 0 and "1 numbers changed" in result.output
    assert invoke(["check", "--golden", str(golden)]).exit_code == 0


def test_missing_rows_are_drift():
    expected = [{"model": "m", "method": "a", "dataset": "d", "auroc": 0.5, "ap": None}]
    diffs = compare(expected, [], 0.0, 0.0)
    assert [d.status for d in diffs] == ["missing", "missing"] and failed(diffs)
    actual = [{"model": "m", "method": "a", "dataset": "d", "auroc": 0.5 + 1e-9,
               "ap": float("nan")}, {"model": "m", "method": "b", "dataset": "d", "auroc": 1}]
    diffs = compare(expected, actual, 0.0, 1e-8)
    assert [d.status for d in diffs] == ["ok", "ok", "new"] and not failed(diffs)
    assert Difference(("m", "a", "d"), "ap", None, None, "ok") in diffs


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    ("{not json", "is not JSON"),
    ('{"format": "other"}', 'lacks "format": "oodbench-golden"'),
    ('{"format": "oodbench-golden", "config": {"methods": ["msp"]}}',
     "needs a config with methods and datasets"),
    ('{"format": "oodbench-golden", "config": {"methods": ["msp"], "datasets": ["d"], '
     '"bogus": 1}}', "unknown config keys ['bogus']"),
    ('{"format": "oodbench-golden", "metric_spec": "0", "config": {"methods": ["msp"], '
     '"datasets": ["d"]}}', "metric spec v0"),
])
def test_bad_golden_files_exit_2(tmp_path, content, message):
    path = tmp_path / "golden.json"
    if content is not None:
        path.write_text(content)
    result = invoke(["check", "--golden", str(path)])
    assert result.exit_code == 2 and message in result.output, result.output


def test_unknown_names_in_a_golden_config_exit_2(tmp_path):
    path = tmp_path / "golden.json"
    path.write_text(json.dumps({"format": "oodbench-golden", "config": {
        "methods": ["nope"], "datasets": ["synth-roadanomaly"]}}))
    result = invoke(["check", "--golden", str(path)])
    assert result.exit_code == 2 and "unknown method 'nope'" in result.output


def test_results_folder_without_results_exits_2(golden, tmp_path):
    result = invoke(["check", "--golden", str(golden), "--results", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no results" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("name", ["synthetic.json", "synthetic-m2f.json"])
def test_repository_golden_file_holds(name):
    """The CI regression check: the synthetic benchmark's numbers equal tests/golden (DeepLab
    and Mask2Former base models)."""
    golden = Path(__file__).parent / "golden" / name
    assert json.loads(golden.read_text())["results"], "golden file has no numbers"
    result = invoke(["check", "--golden", str(golden)])
    assert result.exit_code == 0, result.output
