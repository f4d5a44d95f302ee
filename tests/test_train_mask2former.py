"""Training the tiny Mask2Former with the set criterion, its recipe and its shipped checkpoint."""

import json
import math

import numpy as np
import pytest
import torch

from ood_bench.errors import OodBenchError
from ood_bench.train import (
    DEFAULT_RECIPES,
    SHIPPED_NAMES,
    WEIGHTS_DIR,
    TrainConfig,
    default_config,
    evaluate_segmentation,
    file_sha256,
    fit,
    learning_rate_schedule,
    load_frames,
    load_synthetic_base_model,
    shipped_record,
    train,
)

M2F = "mask2former-tiny"
TINY = {"height": 32, "width": 64, "length": 6}


def _tiny_config(**overrides):
    criterion = {**DEFAULT_RECIPES[M2F]["criterion"], "num_points": 64}
    base = {"steps": 3, "batch_size": 2, "val_dataset": None, "dataset_options": TINY,
            "criterion": criterion}
    return default_config(M2F, **{**base, **overrides})


def _frames(config):
    from ood_bench.adapters import get_dataset

    return load_frames(get_dataset(config.dataset, **config.dataset_options))


def test_deeplab_config_hash_is_unchanged_by_the_new_fields():
    config = default_config()
    assert config.hash == "61e94226137342f9" == shipped_record()["config_hash"]
    assert "schedule" not in config.to_dict() and "criterion" not in config.to_dict()


def test_mask2former_recipe_is_in_its_config():
    config = default_config(M2F)
    data = config.to_dict()
    assert data["schedule"] == "poly" and data["criterion"] == DEFAULT_RECIPES[M2F]["criterion"]
    assert config.hash != default_config(M2F, criterion={}).hash
    assert default_config(M2F, steps=5).steps == 5  # overrides beat the recipe
    with pytest.raises(OodBenchError, match="schedule"):
        TrainConfig(schedule="cosine")


def test_poly_schedule_warms_up_then_decays():
    config = default_config(M2F, steps=10, warmup=0.2, lr=1.0)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    schedule = learning_rate_schedule(optimizer, config)
    rates = []
    for _ in range(config.steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    expected = [0.5, 1.0] + [(1 - k / 8) ** 0.9 for k in range(8)]
    assert rates == pytest.approx(expected)
    assert all(math.isfinite(r) and r > 0 for r in rates)


def test_mask2former_training_is_deterministic_and_learns():
    config = _tiny_config()
    images, labels = _frames(config)
    losses = []
    first = fit(config, images, labels, lambda step, loss: losses.append(loss))
    second = fit(config, images, labels).state_dict()
    state = first.state_dict()
    assert state.keys() == second.keys()
    for key in state:
        assert torch.equal(state[key], second[key]), key
    fresh = fit(_tiny_config(steps=1, lr=0.0), images, labels).state_dict()
    assert any(not torch.equal(state[k], fresh[k]) for k in state if state[k].is_floating_point())
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert first.family == "mask2former" and not first.training


def test_mask2former_loss_falls_on_a_repeated_batch():
    config = _tiny_config(steps=25, batch_size=2, lr=2e-3, warmup=0.0,
                          dataset_options={**TINY, "length": 2})
    losses = []
    fit(config, *_frames(config), lambda step, loss: losses.append(loss))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_train_caches_and_evaluates_the_mask2former(tmp_path):
    config = _tiny_config(steps=2, val_dataset="synth-cityscapes-val")
    result = train(config)
    metrics = result.record["metrics"]["synth-cityscapes-val"]
    assert 0.0 <= metrics["miou"] <= 1.0
    assert result.record["config"]["schedule"] == "poly"
    again = train(config)
    assert again.cached and again.record == result.record
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key


def test_shipped_mask2former_matches_its_record_and_default_recipe():
    record = shipped_record(M2F)
    weights = WEIGHTS_DIR / f"{SHIPPED_NAMES[M2F]}.safetensors"
    assert record["config_hash"] == default_config(M2F).hash
    assert record["weights_sha256"] == file_sha256(weights)
    assert weights.stat().st_size < 5_000_000
    model = load_synthetic_base_model(M2F)
    assert model.family == "mask2former" and not model.training
    assert record["metrics"]["synth-cityscapes-val"]["miou"] > 0.5


def test_load_synthetic_base_model_rejects_unknown_models():
    with pytest.raises(OodBenchError, match="no synthetic base model for 'unet'"):
        load_synthetic_base_model("unet")


def test_run_model_defaults_to_the_shipped_mask2former_on_synthetic_data():
    from ood_bench.runner import SYNTHETIC_SOURCE, load_run_model

    loaded = load_run_model(M2F, None, {}, "synth-roadanomaly")
    assert loaded.name == M2F and loaded.source == SYNTHETIC_SOURCE
    assert loaded.module.family == "mask2former"
    assert load_run_model(None, None, {}, "synth-roadanomaly").name == "deeplabv3plus-small"
    with pytest.raises(OodBenchError, match="without --checkpoint"):
        load_run_model("mask2former-r50", None, {}, "synth-roadanomaly")
    with pytest.raises(OodBenchError, match="options"):
        load_run_model(M2F, None, {"gma": True}, "synth-roadanomaly")


@pytest.mark.slow
def test_shipped_mask2former_scores_as_recorded():
    from ood_bench.adapters import get_dataset

    record = shipped_record(M2F)
    model = load_synthetic_base_model(M2F)
    measured = evaluate_segmentation(model, get_dataset("synth-cityscapes-val"))
    assert measured["miou"] == pytest.approx(record["metrics"]["synth-cityscapes-val"]["miou"],
                                             abs=1e-6)


@pytest.mark.retrain
def test_default_recipe_reproduces_the_shipped_weights():
    """Full training (about 7.5 CPU minutes): bit-identical to the shipped checkpoint."""
    result = train(default_config(M2F), retrain=True)
    assert file_sha256(result.path) == shipped_record(M2F)["weights_sha256"]
    assert json.loads(result.path.with_suffix(".json").read_text())["config_hash"] == \
        shipped_record(M2F)["config_hash"]
