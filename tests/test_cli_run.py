"""``oodbench run`` / ``eval`` / ``export``: tables, bad input (exit 2), kill -9 and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from runner_helpers import METRICS, WIDTH, tiny_checkpoint

from ood_bench.cli import main
from ood_bench.store import ScoreStore, verify_store

HERE = Path(__file__).parent
DATASET = "synth-roadanomaly"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def run_args(checkpoint, out, *extra, method="msp", limit=4):
    return ["run", "--method", method, "--dataset", DATASET, "--model", "deeplabv3plus-small",
            "--checkpoint", str(checkpoint), "--model-option", f"width={WIDTH}", "--limit",
            str(limit), "--out", str(out), *extra]


def invoke(args):
    result = CliRunner().invoke(main, args)
    assert "Traceback" not in result.output, result.output
    return result


def rows(out):
    return [json.loads(line) for line in (Path(out) / "results.jsonl").read_text().splitlines()]


def test_run_prints_the_table_and_eval_reproduces_it(tmp_path, checkpoint):
    out = tmp_path / "out"
    result = invoke(run_args(checkpoint, out, "--method", "energy", "--batch-size", "2"))
    assert result.exit_code == 0, result.output
    for header in ("AUROC", "AP", "FPR@95", "mIoU", "mAcc"):
        assert header in result.output
    (msp, energy) = rows(out)
    assert (msp["method"], energy["method"]) == ("msp", "energy")
    assert f"{100 * energy['auroc']:.2f}" in result.output

    evaluated = invoke(["eval", "--verify", "--store", msp["store"], "--out",
                        str(tmp_path / "again")])
    assert evaluated.exit_code == 0, evaluated.output
    again = rows(tmp_path / "again")[0]
    assert {k: again[k] for k in METRICS} == {k: msp[k] for k in METRICS}


def test_export_smiyc_command(tmp_path, checkpoint):
    out = tmp_path / "out"
    assert invoke(run_args(checkpoint, out, limit=2)).exit_code == 0
    store = rows(out)[0]["store"]
    result = invoke(["export", "smiyc", "--store", store, "--out", str(tmp_path / "sub"),
                     "--method-name", "MyMSP"])
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "sub" / "MyMSP" / DATASET).iterdir())
    assert [f.name for f in files] == ["synth-roadanomaly_00000.hdf5",
                                       "synth-roadanomaly_00001.hdf5"]
    stored = next(ScoreStore(store).read_frames([1]))
    with h5py.File(files[1], "r") as h5:
        np.testing.assert_array_equal(h5["value"][()], stored.score.astype(np.float16))


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--data-root", "/nonexistent/data"], "--data-root '/nonexistent/data' is not a folder"),
    (["--model-option", "width"], "--model-option expects KEY=VALUE"),
    (["--method", "mahalanobis", "--fit-option", "bogus=1"], "takes fit option(s) bogus"),
])
def test_bad_run_arguments_exit_2(tmp_path, checkpoint, args, message):
    result = invoke(run_args(checkpoint, tmp_path, *args))
    assert result.exit_code == 2 and message in result.output, result.output
    if "unknown" in message:
        assert "Valid" in result.output  # the list of valid names


def test_missing_data_root_and_checkpoint_exit_2(tmp_path, checkpoint):
    real = invoke(["run", "--method", "msp", "--dataset", "roadanomaly", "--data-root",
                   str(tmp_path), "--checkpoint", str(checkpoint), "--model",
                   "deeplabv3plus-small"])
    assert real.exit_code == 2 and "does not exist" in real.output, real.output
    no_weights = invoke(["run", "--method", "msp", "--dataset", "roadanomaly"])
    assert no_weights.exit_code == 2 and "needs trained weights" in no_weights.output
    missing = invoke(run_args(tmp_path / "none.safetensors", tmp_path))
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_unreadable_store_exits_2(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_text("garbage")
    result = invoke(["eval", "--store", str(bad)])
    assert result.exit_code == 2 and "not a readable HDF5 file" in result.output
    result = invoke(["export", "smiyc", "--store", str(tmp_path / "none.h5"), "--out",
                     str(tmp_path)])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_mismatched_store_config_exits_2(tmp_path, checkpoint):
    assert invoke(run_args(checkpoint, tmp_path, limit=2)).exit_code == 0
    result = invoke(run_args(checkpoint, tmp_path, "--method-option", "smoothing=true",
                             limit=2))
    assert result.exit_code == 2, result.output
    assert "another configuration" in result.output and "smoothing" in result.output


def test_concurrent_run_is_refused(tmp_path, checkpoint):
    store = ScoreStore(tmp_path / "stores" / f"deeplabv3plus-small__msp__{DATASET}.h5")
    with store.locked():
        result = invoke(run_args(checkpoint, tmp_path, limit=2))
    assert result.exit_code == 2 and "in use by another oodbench run" in result.output


# ---- kill -9 -----------------------------------------------------------------------------------
def start(args, **env):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen([sys.executable, str(HERE / "slow_run.py"), *args], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_when(process, condition, timeout=60.0):
    """SIGKILL ``process`` as soon as ``condition()`` holds (fail if it ends first)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "condition never met"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def finish(args, **env):
    process = start(args, **env)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return output


@pytest.mark.slow
def test_kill_9_while_scoring_and_while_committing_then_resume(tmp_path, checkpoint):
    args = lambda out, limit: run_args(checkpoint, out, "--batch-size", "2",  # noqa: E731
                                       method="slow-msp", limit=limit)
    finish(args(tmp_path / "reference", 10))
    reference = rows(tmp_path / "reference")[0]

    out = tmp_path / "killed"
    store = ScoreStore(out / "stores" / f"deeplabv3plus-small__slow-msp__{DATASET}.h5")
    finish(args(out, 4))  # a committed store with frames 0-3
    committed = store.path.read_bytes()

    # 1. kill -9 while scoring: the store is untouched, finished frames wait in the journal
    process = start(args(out, 10), SLOW_SCORE="0.4")
    kill_when(process, lambda: len(store.journal_indices()) >= 2)
    assert store.path.read_bytes() == committed
    journalled = store.journal_indices()
    assert journalled and journalled <= set(range(4, 10))

    # 2. kill -9 in the middle of the HDF5 commit: the old store is still intact
    process = start(args(out, 10), SLOW_COMMIT="0.3")
    kill_when(process, lambda: any(out.joinpath("stores").glob(f".{store.path.name}.*")))
    assert store.path.read_bytes() == committed
    assert store.committed_indices() == set(range(4))
    assert store.journal_indices() == set(range(4, 10))  # everything scored, nothing lost

    # 3. rerun: same numbers as the uninterrupted run, no duplicate or partial frame
    finish(args(out, 10))
    resumed = rows(out)[0]
    assert {k: resumed[k] for k in METRICS} == {k: reference[k] for k in METRICS}
    assert not store.journal.exists()
    assert verify_store(store) == []
    with h5py.File(store.path, "r") as h5:
        assert sorted(h5["frames/index"][()].tolist()) == list(range(10))
        assert h5.attrs["content_hash"] == ScoreStore(reference["store"]).header()[
            "content_hash"]


@pytest.mark.slow
def test_main_job_command_on_the_synthetic_default(tmp_path, monkeypatch):
    """The README's first command: whole synth-acdc-poc, shipped base model, table printed."""
    monkeypatch.chdir(tmp_path)
    result = invoke(["run", "--method", "msp", "--dataset", "synth-acdc-poc"])
    assert result.exit_code == 0, result.output
    (row,) = rows(tmp_path / "runs")
    assert row["n_frames"] == row["n_labelled"] == 200 and row["checkpoint"] == "synthetic-base"
    assert row["auroc"] > 0.5 and row["miou"] > 0.1
    assert f"{100 * row['auroc']:.2f}" in result.output
