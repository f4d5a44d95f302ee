"""Mask2Former methods (Mask2Anomaly, RbA): scores and losses against hand-computed values on
tiny query outputs, the refinement rule, flip averaging, the family check and short fits."""

import copy
import math
import re

import numpy as np
import pytest
import torch
from methods_helpers import NamedFrames, random_samples

from ood_bench.baselines import get_method
from ood_bench.baselines.mask2anomaly import mask2anomaly_score
from ood_bench.baselines.mask2former_training import adamw_groups, outlier_batch
from ood_bench.baselines.mask_classification import (
    confident_stuff_mask,
    decoder_layers,
    layer_scores,
    layered_ood_loss,
    mask_contrastive_loss,
    mask_msp_score,
    negative_max_score,
    rba_outlier_loss,
    rba_score,
)
from ood_bench.baselines.outlier_exposure import synthetic_outliers
from ood_bench.distributed import Dist
from ood_bench.errors import OodBenchError
from ood_bench.models import create_model
from ood_bench.models.inference import normalize_images
from ood_bench.models.mask2former import semantic_scores

LOG3 = math.log(3.0)  # σ(log 3) = 0.75, σ(−log 3) = 0.25


def class_logits_from(rows: list[dict[int, float]]) -> torch.Tensor:
    """1×Q×20 logits whose softmax is exactly the given {class: probability} rows."""
    logits = torch.full((1, len(rows), 20), -math.inf, dtype=torch.float64)
    for q, row in enumerate(rows):
        for c, p in row.items():
            logits[0, q, c] = math.log(p)
    return logits


def two_queries():
    """Q = 2 over 1×2 pixels: query 0 = 0.5 class 0, 0.3 class 5, 0.2 no-object; query 1 =
    0.2 class 0, 0.8 class 5; masks σ = (0.5, 0.75) for query 0 and (0.75, 0.25) for query 1."""
    classes = class_logits_from([{0: 0.5, 5: 0.3, 19: 0.2}, {0: 0.2, 5: 0.8}])
    masks = torch.tensor([[[[0.0, LOG3]], [[LOG3, -LOG3]]]], dtype=torch.float64)
    return classes, masks


def test_semantic_scores_by_hand():
    classes, masks = two_queries()
    s = semantic_scores(classes, masks)
    assert s.shape == (1, 19, 1, 2)
    # S_0 = 0.5·(0.5, 0.75) + 0.2·(0.75, 0.25); S_5 = 0.3·(0.5, 0.75) + 0.8·(0.75, 0.25)
    torch.testing.assert_close(s[0, 0, 0], torch.tensor([0.4, 0.425]), atol=1e-6, rtol=0)
    torch.testing.assert_close(s[0, 5, 0], torch.tensor([0.75, 0.425]), atol=1e-6, rtol=0)
    others = [c for c in range(19) if c not in (0, 5)]
    assert s[0, others].abs().max() == 0


def test_scores_by_hand():
    s = semantic_scores(*two_queries())
    torch.testing.assert_close(mask_msp_score(s)[0, 0], torch.tensor([0.25, 0.575]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(negative_max_score(s)[0, 0], torch.tensor([-0.75, -0.425]),
                               atol=1e-6, rtol=0)
    rba = torch.tensor([-(math.tanh(0.4) + math.tanh(0.75)), -2 * math.tanh(0.425)])
    torch.testing.assert_close(rba_score(s)[0, 0], rba.float(), atol=1e-6, rtol=0)


def test_query_outputs_are_validated():
    classes, masks = two_queries()
    with pytest.raises(OodBenchError, match=r"N×Q×20"):
        confident_stuff_mask(classes[..., :19], masks, (1, 2))
    with pytest.raises(OodBenchError, match=r"N×Q = \(1, 2\)"):
        confident_stuff_mask(classes, masks[:, :1], (1, 2))


def refinement_queries(stuff_probability: float = 0.97):
    """Q = 4 over 1×4 pixels (σ 0.75 = on, 0.25 = off):
    q0 building p, mask on at pixels 0, 3; q1 sky 0.96, on at pixel 3 only, σ 0.5 at pixel 2
    (0.96·0.5 = 0.48 < 0.5: not covered); q2 road 0.99 (not a refinement class), on at pixel 1;
    q3 vegetation 0.90 (not confident), on at pixel 2."""
    rows = [{2: stuff_probability, 19: 1 - stuff_probability}, {10: 0.96, 0: 0.04},
            {0: 0.99, 19: 0.01}, {8: 0.9, 19: 0.1}]
    on, off = LOG3, -LOG3
    masks = torch.tensor([[[[on, off, off, on]], [[off, off, 0.0, on]], [[off, on, off, off]],
                           [[off, off, on, off]]]], dtype=torch.float64)
    return class_logits_from(rows), masks


def test_refinement_zeroes_confident_stuff_only():
    classes, masks = refinement_queries()
    region = confident_stuff_mask(classes, masks, (1, 4))
    assert region.tolist() == [[[True, False, False, True]]]


@pytest.mark.parametrize("probability", [0.95, 0.9])
def test_refinement_needs_two_confident_queries(probability):
    """With q0 at p ≤ 0.95 only q1 is kept: fewer than two queries → no refinement at all."""
    classes, masks = refinement_queries(probability)
    assert not confident_stuff_mask(classes, masks, (1, 4)).any()


def test_refinement_masks_are_upsampled_per_image():
    classes, masks = refinement_queries()
    classes = torch.cat([classes, class_logits_from([{0: 1.0}] * 4)])
    masks = torch.cat([masks, masks])
    region = confident_stuff_mask(classes, masks, (2, 8))
    up = torch.nn.functional.interpolate(masks[:1, :2].float(), size=(2, 8), mode="bilinear",
                                         align_corners=False).sigmoid()
    expected = torch.maximum(0.97 * up[0, 0], 0.96 * up[0, 1]) >= 0.5
    assert torch.equal(region[0], expected) and not region[1].any()


def test_layer_scores_resize_with_aligned_corners():
    classes = class_logits_from([{0: 1.0}])
    masks = torch.tensor([[[[0.0, LOG3], [-LOG3, 2 * LOG3]]]], dtype=torch.float64)
    up = layer_scores(classes, masks, (3, 3), negative_max_score)[0]
    a, b, c, d = (-0.5, -0.75, -0.25, -0.9)  # −σ of the four mask logits
    torch.testing.assert_close(up[0], torch.tensor([a, (a + b) / 2, b]), atol=1e-6, rtol=0)
    torch.testing.assert_close(up[1, 1], torch.tensor((a + b + c + d) / 4), atol=1e-6,
                               rtol=0)


def test_decoder_layers_order_and_ood_head():
    taps = {"class_logits": torch.zeros(1, 2, 20), "mask_logits": torch.zeros(1, 2, 3, 3),
            "ood_class_logits": torch.ones(1, 2, 20)}
    assert len(decoder_layers(taps)) == 1
    taps |= {"aux_class_logits": torch.full((2, 1, 2, 20), 2.0),
             "aux_mask_logits": torch.full((2, 1, 2, 3, 3), 3.0),
             "ood_aux_class_logits": torch.full((2, 1, 2, 20), 4.0)}
    layers = decoder_layers(taps)
    assert [float(c[0, 0, 0]) for c, _ in layers] == [2.0, 2.0, 0.0]
    assert [float(m[0, 0, 0, 0]) for _, m in layers] == [3.0, 3.0, 0.0]
    assert [float(c[0, 0, 0]) for c, _ in decoder_layers(taps, "ood_")] == [4.0, 4.0, 1.0]


def test_mask_contrastive_loss_by_hand():
    scores = torch.tensor([[-0.2, -0.6, -1.0, -0.1]])
    label = torch.tensor([[0, 255, 254, 254]])
    # in (void included): (0.04 + 0.36) / 2 = 0.2; out: ((1 + 1)² + (1 + 0.1)²) / 2 = 2.605
    torch.testing.assert_close(mask_contrastive_loss(scores, label), torch.tensor(1.4025))
    torch.testing.assert_close(mask_contrastive_loss(scores[:, :2], label[:, :2]),
                               torch.tensor(0.1))
    torch.testing.assert_close(mask_contrastive_loss(scores, label, margin=0.5),
                               torch.tensor(0.5 * (0.2 + (1.5**2 + 0.6**2) / 2)))


def test_rba_outlier_loss_by_hand():
    scores = torch.tensor([[-1.0, 0.5, -2.0, 3.0]])
    label = torch.tensor([[0, 1, 254, 255]])
    # in: (0² + 0.5²) / 2 = 0.125; out: (5 + 2)² = 49; void excluded
    torch.testing.assert_close(rba_outlier_loss(scores, label), torch.tensor(24.5625))
    torch.testing.assert_close(rba_outlier_loss(scores[:, :2], label[:, :2]),
                               torch.tensor(0.125))
    # the code defaults γ_in = −1, γ_out = −0.1: in (0 + 1.5²)/2, out relu(−0.1 + 2)²
    torch.testing.assert_close(rba_outlier_loss(scores, label, -1.0, -0.1),
                               torch.tensor(0.5 * (1.125 + 1.9**2)))


# --- methods on the tiny Mask2Former -------------------------------------------------------


def frames(count: int = 4):
    return NamedFrames(random_samples(count, 32, 64, seed=3))


def outliers():
    return synthetic_outliers(32, 64)


@pytest.mark.parametrize(("name", "action"), [
    ("rba", "score"), ("mask2anomaly", "fit"), ("rba+oe", "fit")])
def test_mask_methods_reject_deeplab(name, action, images):
    deeplab = create_model("deeplabv3plus-small", num_classes=19, width=8).eval()
    method = get_method(name)
    with pytest.raises(OodBenchError, match=f"method '{re.escape(name)}' needs a Mask2Former"):
        if action == "score":
            method.score(deeplab, images)
        else:
            method.fit(deeplab, frames(2), steps=1)


def test_rba_method_is_the_formula_on_the_model_logits(m2f, images):
    out = get_method("rba").score(m2f, images)
    with torch.no_grad():
        logits = m2f(images).logits
    torch.testing.assert_close(out.scores, -torch.tanh(logits).sum(1))
    assert torch.equal(out.prediction, logits.argmax(1))


def test_mask2anomaly_refinement_on_model_outputs(m2f, images):
    """Every query made a confident 'building' (class 2): the score is 0 exactly where some
    query's p·σ(mask) ≥ 0.5, and 1 − max_c S_c elsewhere."""
    confident = copy.deepcopy(m2f)
    with torch.no_grad():
        confident.class_predictor.weight.zero_()
        confident.class_predictor.bias.fill_(-20.0)
        confident.class_predictor.bias[2] = 20.0
        output = confident(images, taps=("class_logits", "mask_logits"))
    scores = mask2anomaly_score(output)
    p = torch.softmax(confident.class_predictor.bias, 0)[2]
    masks = torch.nn.functional.interpolate(output.taps["mask_logits"], size=(32, 64),
                                            mode="bilinear", align_corners=False).sigmoid()
    region = (p * masks).amax(1) >= 0.5
    assert 0 < region.float().mean() < 1
    assert (scores[region] == 0).all()
    torch.testing.assert_close(scores[~region], (1 - output.logits.amax(1))[~region])
    torch.testing.assert_close(mask2anomaly_score(output, refine=False),
                               1 - output.logits.amax(1))


def test_mask2anomaly_fit_flip_averaging_and_what_trains(m2f, images):
    before = {k: v.clone() for k, v in m2f.state_dict().items()}
    method = get_method("mask2anomaly", recipe="synthetic", refine=False)
    method.fit(m2f, frames(), steps=2, outliers=outliers())
    assert all(torch.equal(before[k], v) for k, v in m2f.state_dict().items())  # untouched
    tuned = method.model.state_dict()
    backbone = "pixel_level_module.encoder."
    changed = {k for k, v in tuned.items() if not torch.equal(v, before[k])}
    assert changed and not any(k.startswith(backbone) for k in changed)  # BN stats included
    assert any(k.startswith("class_predictor") for k in changed)
    out = method.score(m2f, images)
    with torch.no_grad():
        plain = 1 - method.model(images).logits.amax(1)
        mirrored = 1 - method.model(images.flip(-1)).logits.amax(1)
    torch.testing.assert_close(out.scores, 0.5 * (plain + mirrored.flip(-1)))
    single = get_method("mask2anomaly", recipe="synthetic", refine=False, flip=False)
    single.fit(m2f, frames(), steps=2, outliers=outliers(), on_step=pytest.fail)  # cached
    assert single.trained_key == method.trained_key
    torch.testing.assert_close(single.score(m2f, images).scores, plain)


def test_rba_oe_trains_only_the_mask_embedding(m2f):
    before = {k: v.clone() for k, v in m2f.state_dict().items()}
    method = get_method("rba+oe", recipe="synthetic")
    method.fit(m2f, frames(), steps=2, outliers=outliers())
    changed = {k for k, v in method.model.state_dict().items() if not torch.equal(v, before[k])}
    prefix = "transformer_module.decoder.mask_predictor.mask_embedder."
    assert changed and all(k.startswith(prefix) for k in changed)


def test_rba_oe_loss_pushes_outlier_scores_up(m2f):
    """A few fitting steps lower RbA's outlier loss on a fixed pasted batch."""
    source, data = outliers(), frames(8)
    batch = outlier_batch(data, 0, 0, 8, Dist(), crop=None, outliers=source, probability=1.0)
    x = normalize_images(batch.images)
    y = torch.as_tensor(batch.labels.astype(np.int64))

    def loss(model):
        with torch.no_grad():
            taps = model(x).taps
        return float(layered_ood_loss(taps, y, rba_score, rba_outlier_loss))

    method = get_method("rba+oe", recipe="synthetic")
    method.fit(m2f, data, steps=6, outliers=source)
    assert loss(method.model) < loss(m2f)


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_outlier_batch_pastes_with_probability(probability):
    data, source = frames(4), outliers()
    batch = outlier_batch(data, 0, 3, 4, Dist(), crop=None, outliers=source,
                          probability=probability)
    pasted = [(label == 254).any() for label in batch.labels]
    assert pasted == [probability == 1.0] * 4
    again = outlier_batch(data, 0, 3, 4, Dist(), crop=None, outliers=source,
                          probability=probability)
    assert np.array_equal(batch.images, again.images)


def test_outlier_batch_rate_matches_probability():
    data, source = frames(4), outliers()
    hits = [(outlier_batch(data, 0, step, 4, Dist(), crop=None, outliers=source,
                           probability=0.2).labels == 254).any(axis=(1, 2))
            for step in range(50)]
    assert 0.12 < np.mean(hits) < 0.28  # 200 frames, p = 0.2 (±2.8 σ)


def test_adamw_groups_scale_the_backbone_and_skip_decay_on_norms(m2f):
    groups = m2f.param_groups()
    built = adamw_groups(m2f, {"backbone": groups["backbone"], "class_head":
                               groups["class_head"]}, 1e-3, 0.05, 0.1)
    norm_ids = {id(p) for m in m2f.modules() if isinstance(m, torch.nn.BatchNorm2d)
                for p in m.parameters()}
    for group in built:
        is_backbone = any(p is q for p in group["params"] for q in groups["backbone"])
        assert group["lr"] == pytest.approx(1e-4 if is_backbone else 1e-3)
        has_norm = any(id(p) in norm_ids for p in group["params"])
        assert group["weight_decay"] == (0.0 if has_norm else 0.05)
    counted = sum(len(g["params"]) for g in built)
    assert counted == len(groups["backbone"]) + len(groups["class_head"])


def test_interrupted_fit_resumes_to_the_same_weights(m2f, tmp_path, monkeypatch):
    def fit(cache: str, on_step=None):
        monkeypatch.setenv("OODBENCH_CACHE", str(tmp_path / cache))
        method = get_method("mask2anomaly", recipe="synthetic")
        method.fit(m2f, frames(), steps=3, outliers=outliers(), checkpoint_every=1,
                   on_step=on_step)
        return method.model.state_dict()

    def stop_after_two(done: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit("interrupted", stop_after_two)
    assert len(list((tmp_path / "interrupted").rglob("*.checkpoint.pt"))) == 1
    resumed, straight = fit("interrupted"), fit("straight")
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def _ddp_worker(rank: int, world: int, init_file: str, cache: str, out: str) -> None:
    import os

    import torch.distributed as torch_dist

    os.environ["OODBENCH_CACHE"] = cache
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                  world_size=world)
    try:
        torch.manual_seed(0)
        model = create_model("mask2former-tiny").eval()
        method = get_method("mask2anomaly", recipe="synthetic")
        method.fit(model, frames(), steps=2, outliers=outliers(), distributed=True)
        torch.save(method.model.state_dict(), f"{out}/rank{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_fine_tuning_keeps_ranks_in_sync(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "cache"),
                                str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1  # rank 0 wrote it
