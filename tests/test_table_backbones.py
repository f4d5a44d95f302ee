"""``oodbench table`` groups local DeepLabv3+ and Mask2Former rows like the paper's Table 2."""

from __future__ import annotations

import csv
import io
import json

from click.testing import CliRunner

from ood_bench.cli import main
from ood_bench.leaderboards.published import load_published


def _row(model: str, method: str, dataset: str, **metrics: float) -> dict:
    """A results.jsonl line in the runner's schema (metrics as fractions)."""
    return {"model": model, "method": method, "dataset": dataset, "n_frames": 200,
            "metric_spec": "1", "config_hash": "abc", "version": "0.1.0",
            "started": "2026-11-27T00:00:00", "finished": "2026-11-27T00:00:00",
            "store": f"{model}__{method}__{dataset}.h5", **metrics}


def test_local_mask2former_rows_join_the_papers_mask2former_group(tmp_path):
    rows = [  # the Mask2Former line first: grouping must not follow the file order
        _row("mask2former-tiny", "msp", "acdc-poc", ap=0.05, fpr95=0.6, miou=0.4, macc=0.7),
        _row("deeplabv3plus-small", "msp", "acdc-poc", ap=0.03, fpr95=0.7, miou=0.3, macc=0.6),
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(main, ["table", "--results", str(tmp_path), "--published",
                                       "table2", "--datasets", "acdc-poc", "--format", "csv"])
    assert result.exit_code == 0, result.output
    lines = list(csv.DictReader(io.StringIO(result.output)))
    backbones = [line["backbone"] for line in lines]
    # one contiguous block per backbone, DeepLabv3+ first as in the paper
    assert backbones == sorted(backbones, key=["DeepLabv3+", "Mask2Former"].index)
    published = {(c["backbone"], c["method"]) for c in load_published("table2")}
    for backbone in ("DeepLabv3+", "Mask2Former"):
        block = [line for line in lines if line["backbone"] == backbone]
        # the paper's rows of that backbone come first, then this run's row
        assert [(backbone, line["method"]) in published for line in block[:-1]] == \
            [True] * (len(block) - 1)
        assert block[-1]["source"] == "this run" and block[-1]["method"] == "msp"
    mask2former = [line for line in lines if line["backbone"] == "Mask2Former"][-1]
    assert mask2former["acdc-poc/miou"] == "40.00" and mask2former["acdc-poc/ap"] == "5.00"
