"""Sharding helpers and a real 2-process gloo run (torchrun) against a one-process run."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from runner_helpers import METRICS, WIDTH, tiny_checkpoint

from ood_bench.distributed import Dist, context, shard
from ood_bench.errors import OodBenchError
from ood_bench.runner import pending_batches
from ood_bench.store import ScoreStore

HERE = Path(__file__).parent


def test_shard_is_round_robin_and_covers_everything():
    items = list(range(11))
    parts = [shard(items, rank, 3) for rank in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(sum(parts, [])) == items
    with pytest.raises(OodBenchError):
        shard(items, 3, 3)


def test_pending_batches_keep_fixed_boundaries():
    assert pending_batches(7, set(), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert pending_batches(7, {0, 1, 2, 4}, 3) == [[3, 4, 5], [6]]
    assert pending_batches(7, set(range(7)), 3) == []


def test_single_process_context_and_collectives(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    dist = context()
    assert (dist.rank, dist.world_size, dist.active) == (0, 1, False)
    assert dist.gather({"a": 1}) == [{"a": 1}] and dist.broadcast(5) == 5
    with dist.main_first():
        pass
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(OodBenchError, match="WORLD_SIZE"):
        context()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(OodBenchError, match="inconsistent"):
        context()


class _RankOneFailed(Dist):
    """Rank 0 of two whose peer reported an error."""

    def gather(self, obj):
        return [obj, "rank 1: boom"]


def test_an_error_on_another_rank_is_raised_everywhere():
    with pytest.raises(OodBenchError, match="another rank failed: rank 1: boom"):
        _RankOneFailed(0, 2).check(None)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_give_the_numbers_of_one(tmp_path):
    """70 frames in 18 batches (the last of 2) over 2 ranks; two metric chunks, gathered."""
    checkpoint = tiny_checkpoint(tmp_path / "tiny.safetensors")
    args = ["run", "--method", "msp,energy", "--dataset", "synth-roadanomaly", "--model",
            "deeplabv3plus-small", "--checkpoint", str(checkpoint), "--model-option",
            f"width={WIDTH}", "--limit", "70", "--batch-size", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    entry = str(HERE / "slow_run.py")
    single = subprocess.run([sys.executable, entry, *args, "--out", str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stdout + single.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={_free_port()}", entry, *args, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("oodbench results") == 1  # only rank 0 prints the table
    read = lambda out: [json.loads(x) for x in (tmp_path / out / "results.jsonl").open()]  # noqa: E731
    for one_row, two_row in zip(read("one"), read("two"), strict=True):
        assert {k: one_row[k] for k in METRICS} == {k: two_row[k] for k in METRICS}
        assert two_row["n_frames"] == 70  # two metric chunks, one per rank
        hashes = [ScoreStore(row["store"]).header()["content_hash"] for row in (one_row,
                                                                                two_row)]
        assert hashes[0] == hashes[1]
