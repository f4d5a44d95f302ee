"""Base-model training: determinism, the config-hash cache, the CLI and the shipped checkpoint."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from ood_bench.cache import config_hash
from ood_bench.cli.app import main
from ood_bench.train import (
    SHIPPED_NAME,
    WEIGHTS_DIR,
    _batches,
    checkpoint_paths,
    default_config,
    file_sha256,
    fit,
    load_frames,
    load_synthetic_base_model,
    shipped_record,
    train,
)

TINY = {"height": 32, "width": 64, "length": 8}


def _tiny_config(**overrides):
    base = {"steps": 3, "batch_size": 2, "threads": 1, "val_dataset": None,
            "dataset_options": TINY, "model_options": {"width": 8}}
    return default_config(**{**base, **overrides})


def _frames(config):
    from ood_bench.adapters import get_dataset

    return load_frames(get_dataset(config.dataset, **config.dataset_options))


def test_training_twice_gives_identical_weights():
    config = _tiny_config()
    images, labels = _frames(config)
    first = fit(config, images, labels).state_dict()
    second = fit(config, images, labels).state_dict()
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    other = fit(_tiny_config(seed=1), images, labels).state_dict()
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


def test_training_restores_torch_settings():
    threads = torch.get_num_threads()
    config = _tiny_config(steps=1)
    fit(config, *_frames(config))
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()


def test_labels_outside_train_ids_are_ignored():
    config = _tiny_config(dataset_options={**TINY, "outliers": 3})
    _, labels = _frames(config)
    values = set(np.unique(labels).tolist())
    assert values <= {*range(19), 255} and 254 not in values


def test_batches_cover_every_frame_once_per_epoch():
    rng = np.random.default_rng(0)
    steps = list(_batches(10, 4, 5, rng))
    seen = np.concatenate([index for index, _ in steps])
    assert len(seen) == 20
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))


def test_cache_is_keyed_by_config_hash():
    config = _tiny_config()
    weights, record_path = checkpoint_paths(config)
    assert config.hash in weights.name and config.hash == config_hash(config.to_dict())
    first = train(config)
    assert not first.cached and weights.exists()
    record = json.loads(record_path.read_text())
    assert record["config_hash"] == config.hash and record["weights_sha256"] == file_sha256(weights)
    again = train(config)
    assert again.cached
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key])
    assert not train(config, retrain=True).cached
    assert checkpoint_paths(_tiny_config(seed=2))[0] != weights


def test_validation_metrics_are_recorded():
    config = _tiny_config(val_dataset="synth-cityscapes-val")
    record = train(config).record
    metrics = record["metrics"]["synth-cityscapes-val"]
    assert 0 <= metrics["miou"] <= 1 and len(metrics["iou"]) == 19


def test_cli_trains_then_reuses_the_cache(tmp_path):
    args = ["train", "--dataset", "synth-cityscapes-val", "--steps", "2", "--batch-size", "2",
            "--out", str(tmp_path / "model.safetensors")]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("trained: ")
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0 and second.stdout.startswith("cached: ")
    record = json.loads((tmp_path / "model.json").read_text())
    assert record["command"] == ("oodbench train --model deeplabv3plus-small --dataset "
                                 "synth-cityscapes-val --seed 0 --steps 2 --batch-size 2")
    assert record["weights_sha256"] == file_sha256(tmp_path / "model.safetensors")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "deeplabv3plus-tiny"], "unknown model 'deeplabv3plus-tiny'"),
        (["--dataset", "synth-cityscape"], "Did you mean 'synth-cityscapes'"),
        (["--out", "model.pt"], "--out must name a .safetensors file"),
    ],
)
def test_cli_bad_input_exits_2(args, message):
    result = CliRunner().invoke(main, ["train", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_shipped_checkpoint_matches_its_record():
    record = shipped_record()
    config = default_config()
    assert record["config_hash"] == config.hash  # the default recipe still produces this file
    assert record["config"] == config.to_dict()
    assert record["command"] == ("oodbench train --model deeplabv3plus-small "
                                 "--dataset synth-cityscapes --seed 0")
    weights = WEIGHTS_DIR / f"{SHIPPED_NAME}.safetensors"
    assert file_sha256(weights) == record["weights_sha256"]
    model = load_synthetic_base_model()
    shipped = load_file(str(weights))
    for key, value in model.state_dict().items():
        assert torch.equal(value, shipped[key]), key
    assert record["metrics"]["synth-cityscapes-val"]["miou"] >= 0.70


def test_base_model_is_retrained_when_the_recipe_changed(monkeypatch, tmp_path):
    import ood_bench.train as training

    (tmp_path / f"{SHIPPED_NAME}.json").write_text(json.dumps({"config_hash": "stale"}))
    (tmp_path / f"{SHIPPED_NAME}.safetensors").write_bytes(b"not loaded")
    monkeypatch.setattr(training, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(training, "default_config", lambda *model: _tiny_config())
    model = load_synthetic_base_model()
    weights, _ = checkpoint_paths(_tiny_config())
    assert weights.exists() and not model.training
    stored = load_file(str(weights))
    for key, value in model.state_dict().items():
        assert torch.equal(value, stored[key]), key
