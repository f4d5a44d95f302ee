"""``oodbench train --method cgaug`` and scoring its saved model with ``oodbench run``."""

import json

import torch
from click.testing import CliRunner

from ood_bench.cli.app import main
from ood_bench.models import load_model


def test_train_method_saves_a_model_that_run_scores_with_its_ood_head(tmp_path):
    out = tmp_path / "cgaug.safetensors"
    result = CliRunner().invoke(main, [
        "train", "--method", "cgaug", "--dataset", "synth-cityscapes", "--steps", "2",
        "--fit-option", "max_frames=2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "fitted cgaug on synth-cityscapes" in result.output
    model = load_model("deeplabv3plus-small", out, width=16)
    assert not torch.equal(model.ood_head.weight, model.classifier.weight)  # trained
    runs = tmp_path / "runs"
    result = CliRunner().invoke(main, [
        "run", "--method", "cgaug", "--dataset", "synth-roadanomaly", "--limit", "2",
        "--model", "deeplabv3plus-small", "--checkpoint", str(out), "--model-option",
        "width=16", "--out", str(runs)])  # no training data needed: the head is loaded
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in (runs / "results.jsonl").read_text().splitlines()]
    assert row["method"] == "cgaug" and 0 <= row["ap"] <= 1


def test_train_method_rejects_bad_input():
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--method", "msp"])
    assert result.exit_code == 2 and "needs no training" in result.output
    result = runner.invoke(main, ["train", "--method", "cgaug", "--fit-option", "bogus=1"])
    assert result.exit_code == 2 and "takes no fit option bogus" in result.output
    result = runner.invoke(main, ["train", "--fit-option", "max_frames=2"])
    assert result.exit_code == 2 and "go with --method" in result.output
    result = runner.invoke(main, ["train", "--method", "cgaug", "--batch-size", "4"])
    assert result.exit_code == 2 and "--batch-size" in result.output
