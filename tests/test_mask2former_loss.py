"""The Mask2Former set criterion against hand-computed values and brute-force matching."""

import itertools
import math

import numpy as np
import pytest
import torch

from ood_bench.errors import OodBenchError
from ood_bench.models.mask2former_loss import (
    SetCriterion,
    classification_loss,
    hungarian_match,
    mask_bce,
    mask_dice,
    pairwise_mask_costs,
    point_sample,
    select_low_loss_points,
    semantic_targets,
    uncertain_points,
)

LN2, LN3 = math.log(2), math.log(3)


def test_semantic_targets_one_mask_per_present_class():
    labels = torch.tensor([[[3, 3, 255, 254], [0, 3, 0, 18]]])
    (target,) = semantic_targets(labels)
    assert target.labels.tolist() == [0, 3, 18]
    assert target.masks.tolist() == [
        [[False, False, False, False], [True, False, True, False]],
        [[True, True, False, False], [False, True, False, False]],
        [[False, False, False, False], [False, False, False, True]],
    ]
    assert target.valid.tolist() == [[True, True, False, False], [True, True, True, True]]
    (background,) = semantic_targets(labels, outliers="background")
    assert background.labels.tolist() == [0, 3, 18]
    assert background.valid.tolist() == [[True, True, False, True], [True, True, True, True]]
    assert not background.masks[:, 0, 3].any()  # an outlier pixel belongs to no class mask


def test_semantic_targets_rejects_bad_input():
    with pytest.raises(OodBenchError, match="N×H×W"):
        semantic_targets(torch.zeros(2, 3))
    with pytest.raises(OodBenchError, match="integer"):
        semantic_targets(torch.zeros(1, 2, 3))
    with pytest.raises(OodBenchError, match="outliers"):
        semantic_targets(np.zeros((1, 2, 3), np.uint8), outliers="void")


def test_point_sample_reads_pixel_centres_and_repeats_the_border():
    maps = torch.arange(6.0).reshape(1, 2, 3)
    centres = torch.tensor([[[0.5 / 3, 0.25], [2.5 / 3, 0.75], [1.5 / 3, 0.75]]])
    assert point_sample(maps, centres)[0].tolist() == pytest.approx([0.0, 5.0, 4.0], abs=1e-6)
    corner = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    assert point_sample(maps, corner)[0].tolist() == pytest.approx([0.0, 5.0], abs=1e-6)
    between = torch.tensor([[[1.0 / 3, 0.25]]])  # halfway between pixels 0 and 1
    assert point_sample(maps, between).item() == pytest.approx(0.5)


def test_mask_bce_hand_computed():
    logits, targets = torch.tensor([[0.0, math.log(3)]]), torch.tensor([[1.0, 0.0]])
    # BCE(0, 1) = ln 2; BCE(ln 3, 0) = -ln(1 - 3/4) = ln 4
    assert mask_bce(logits, targets).item() == pytest.approx((LN2 + 2 * LN2) / 2)
    assert mask_bce(logits, targets, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(LN2)
    assert mask_bce(logits, targets, torch.zeros(1, 2)).item() == 0.0


def test_mask_dice_hand_computed():
    logits, targets = torch.tensor([[0.0, math.log(3)]]), torch.tensor([[1.0, 0.0]])
    # σ = (1/2, 3/4): 1 - (2·1/2 + 1) / (5/4 + 1 + 1)
    assert mask_dice(logits, targets).item() == pytest.approx(1 - 2 / 3.25)
    # only the first point counts: 1 - (2·1/2 + 1) / (1/2 + 1 + 1)
    weights = torch.tensor([[1.0, 0.0]])
    assert mask_dice(logits, targets, weights).item() == pytest.approx(1 - 2 / 2.5)
    perfect = mask_dice(torch.tensor([[50.0, -50.0]]), targets)
    assert perfect.item() == pytest.approx(0.0, abs=1e-6)


def test_pairwise_costs_equal_the_per_pair_losses():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 9, generator=generator)
    targets = (torch.rand(3, 9, generator=generator) > 0.5).float()
    weights = torch.tensor([1.0, 1, 0, 1, 1, 0, 1, 1, 1])
    bce, dice = pairwise_mask_costs(logits, targets, weights)
    for q, k in itertools.product(range(4), range(3)):
        pair = logits[q : q + 1], targets[k : k + 1], weights[None]
        assert bce[q, k].item() == pytest.approx(mask_bce(*pair).item(), rel=1e-5)
        assert dice[q, k].item() == pytest.approx(mask_dice(*pair).item(), rel=1e-5)


def test_classification_loss_weights_no_object():
    logits = torch.zeros(1, 2, 3)
    logits[0, 1, 2] = LN2  # query 1: p(no-object) = 2 / (1 + 1 + 2) = 1/2
    (target,) = semantic_targets(torch.ones(1, 2, 2, dtype=torch.long))
    matches = [(torch.tensor([0]), torch.tensor([0]))]  # query 0 -> class 1; query 1 unmatched
    loss = classification_loss(logits, matches, [target], no_object_weight=0.1)
    assert loss.item() == pytest.approx((1.0 * LN3 + 0.1 * LN2) / 1.1, rel=1e-6)


def _three_region_labels() -> torch.Tensor:
    labels = torch.full((1, 8, 12), 255, dtype=torch.long)
    labels[0, :, :4], labels[0, :, 4:8], labels[0, :, 8:] = 5, 7, 11
    return labels


def test_matching_finds_the_visible_optimum():
    labels = _three_region_labels()
    targets = semantic_targets(labels)  # targets: class 5 (left), 7 (middle), 11 (right)
    q = 5
    class_logits = torch.zeros(1, q, 20)
    mask_logits = torch.full((1, q, 8, 12), -8.0)
    # query 4 is the left class-5 region, query 0 the middle (7), query 2 the right (11)
    for query, cls, cols in ((4, 5, slice(0, 4)), (0, 7, slice(4, 8)), (2, 11, slice(8, 12))):
        class_logits[0, query, cls] = 6.0
        mask_logits[0, query, :, cols] = 8.0
    # decoy: query 1 has the right class for the left region but the middle's mask
    class_logits[0, 1, 5] = 6.0
    mask_logits[0, 1, :, 4:8] = 8.0
    ((queries, indices),) = hungarian_match(class_logits, mask_logits, targets, num_points=500,
                                            generator=torch.Generator().manual_seed(0))
    assert dict(zip(queries.tolist(), indices.tolist(), strict=True)) == {4: 0, 0: 1, 2: 2}


@pytest.mark.parametrize("queries", [3, 5])
def test_matching_equals_brute_force_over_permutations(queries):
    generator = torch.Generator().manual_seed(queries)
    labels = _three_region_labels()
    (target,) = semantic_targets(labels)
    class_logits = torch.randn(1, queries, 20, generator=generator)
    mask_logits = 2 * torch.randn(1, queries, 8, 12, generator=generator)
    weights = {"class_weight": 2.0, "mask_weight": 5.0, "dice_weight": 5.0}
    ((rows, columns),) = hungarian_match(
        class_logits, mask_logits, [target], num_points=64,
        generator=torch.Generator().manual_seed(1), **weights,
    )
    # the cost matrix, pair by pair, on the same points (the same seeded draw)
    coords = torch.rand(1, 64, 2, generator=torch.Generator().manual_seed(1))
    probs = class_logits[0].softmax(-1)
    valid = point_sample(target.valid[None].float(), coords, mode="nearest")
    cost = np.empty((queries, 3))
    for q, k in itertools.product(range(queries), range(3)):
        predicted = point_sample(mask_logits[0, q : q + 1], coords)
        wanted = point_sample(target.masks[k : k + 1].float(), coords)
        cost[q, k] = (-2.0 * probs[q, target.labels[k]] + 5.0 * mask_bce(predicted, wanted, valid)
                      + 5.0 * mask_dice(predicted, wanted, valid)).item()
    best = min(sum(cost[q, k] for k, q in enumerate(perm))
               for perm in itertools.permutations(range(queries), 3))
    assert cost[rows.numpy(), columns.numpy()].sum() == pytest.approx(best, rel=1e-5)
    assert sorted(columns.tolist()) == [0, 1, 2] and len(set(rows.tolist())) == 3


def test_select_low_loss_points_keeps_the_lowest_bce_and_adds_random_ones():
    mask_logits = torch.linspace(-10, 10, 1000).reshape(1, 1, 1000)  # BCE vs 1 falls with x
    target = torch.ones(1, 1, 1000, dtype=torch.bool)
    coords = select_low_loss_points(mask_logits, target, 100,
                                    generator=torch.Generator().manual_seed(3))
    replay = torch.Generator().manual_seed(3)
    drawn, extra = torch.rand(1, 125, 2, generator=replay), torch.rand(1, 5, 2, generator=replay)
    assert coords.shape == (1, 100, 2)
    expected = drawn[0, drawn[0, :, 0].argsort(descending=True)[:95]]
    assert sorted(coords[0, :95, 0].tolist()) == sorted(expected[:, 0].tolist())
    assert torch.equal(coords[0, 95:], extra[0])


def test_select_low_loss_points_ranks_invalid_pixels_last():
    mask_logits = torch.zeros(2, 1, 10)
    target = torch.zeros(2, 1, 10)
    valid = torch.zeros(1, 10, dtype=torch.bool)
    valid[0, 7:] = True  # x ≥ 0.7 counts
    coords = select_low_loss_points(mask_logits, target, 20, valid=valid, keep=0.5,
                                    oversample=1.0, generator=torch.Generator().manual_seed(0))
    replay = torch.rand(2, 20, 2, generator=torch.Generator().manual_seed(0))
    for mask in range(2):
        inside = int((replay[mask, :, 0] >= 0.7).sum())
        kept = coords[mask, :10, 0]
        assert int((kept >= 0.7).sum()) == min(inside, 10)


def test_uncertain_points_prefer_small_logits():
    mask_logits = torch.linspace(-5, 5, 100).reshape(1, 1, 100) ** 2  # 0 at the centre
    coords = uncertain_points(mask_logits, 40, oversample=3.0, importance=0.75,
                              generator=torch.Generator().manual_seed(0))
    replay = torch.rand(1, 120, 2, generator=torch.Generator().manual_seed(0))
    distance = (replay[0, :, 0] - 0.5).abs()
    expected = sorted(replay[0, distance.argsort()[:30], 0].tolist())
    assert sorted(coords[0, :30, 0].tolist()) == pytest.approx(expected)


def _outputs(n=2, q=6, layers=3, seed=0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    return {
        "class_logits": torch.randn(n, q, 20, generator=generator).requires_grad_(requires_grad),
        "mask_logits": torch.randn(n, q, 4, 6, generator=generator).requires_grad_(requires_grad),
        "aux_class_logits": torch.randn(layers - 1, n, q, 20, generator=generator),
        "aux_mask_logits": torch.randn(layers - 1, n, q, 4, 6, generator=generator),
    }


def _labels(n=2):
    labels = torch.randint(0, 4, (n, 16, 24), generator=torch.Generator().manual_seed(9))
    labels[:, :3] = 255
    return labels


def test_criterion_single_class_image_hand_computed():
    labels = torch.full((1, 8, 8), 4, dtype=torch.long)
    class_logits = torch.zeros(1, 2, 20)
    class_logits[0, 0, 19] = 5.0  # query 0: no-object; query 1: uniform -> matched to class 4
    mask_logits = torch.full((1, 2, 2, 2), -1.0)
    mask_logits[0, 1] = LN3  # σ = 3/4 everywhere
    criterion = SetCriterion(num_points=10, deep_supervision=False)
    total, terms = criterion({"class_logits": class_logits, "mask_logits": mask_logits}, labels)
    p_no_object = math.exp(5) / (19 + math.exp(5))
    ce = (math.log(20) - 0.1 * math.log(p_no_object)) / 1.1  # weights 1 and 0.1
    assert terms["loss_ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["loss_mask"].item() == pytest.approx(-math.log(0.75), rel=1e-5)
    dice = 1 - (2 * 0.75 * 10 + 1) / (0.75 * 10 + 10 + 1)
    assert terms["loss_dice"].item() == pytest.approx(dice, rel=1e-5)
    assert total.item() == pytest.approx(2 * ce - 5 * math.log(0.75) + 5 * dice, rel=1e-5)


def test_criterion_deep_supervision_terms_and_gradients():
    outputs = _outputs(requires_grad=True)
    total, terms = SetCriterion(num_points=50)(outputs, _labels())
    assert sorted(terms) == sorted(f"{kind}{suffix}" for kind in ("loss_ce", "loss_mask",
                                   "loss_dice") for suffix in ("", "_0", "_1"))
    weights = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    expected = sum(weights[key.rstrip("_01")] * value for key, value in terms.items())
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total.backward()
    assert outputs["mask_logits"].grad.abs().sum() > 0
    assert outputs["class_logits"].grad.abs().sum() > 0
    _, final_only = SetCriterion(num_points=50, deep_supervision=False)(_outputs(), _labels())
    assert sorted(final_only) == ["loss_ce", "loss_dice", "loss_mask"]


def test_criterion_is_deterministic_per_seed():
    first = SetCriterion(num_points=30, seed=4)(_outputs(), _labels())[0]
    second = SetCriterion(num_points=30, seed=4)(_outputs(), _labels())[0]
    other = SetCriterion(num_points=30, seed=5)(_outputs(), _labels())[0]
    assert first.item() == second.item() and other.item() != first.item()


def test_criterion_ignores_void_and_optionally_counts_outliers():
    labels = _labels()
    outliers = labels.clone()
    outliers[:, :3] = 254
    void = SetCriterion(num_points=200, seed=1)(_outputs(), labels)[0]
    ignored = SetCriterion(num_points=200, seed=1)(_outputs(), outliers)[0]
    counted = SetCriterion(num_points=200, seed=1, outliers="background")(_outputs(), outliers)
    assert ignored.item() == void.item() and counted[0].item() != void.item()


def test_criterion_mask_losses_do_not_see_predictions_deep_in_void():
    labels = torch.full((1, 16, 16), 2, dtype=torch.long)
    labels[0, :, 8:] = 255
    outputs = _outputs(n=1, layers=1)
    outputs["mask_logits"] = torch.randn(1, 6, 16, 16, generator=torch.Generator().manual_seed(2))
    changed = {**outputs, "mask_logits": outputs["mask_logits"].clone()}
    changed["mask_logits"][..., 10:] += 7.0  # beyond the bilinear reach of valid pixels
    criterion = dict(num_points=300, deep_supervision=False)
    a = SetCriterion(**criterion)(outputs, labels)[1]
    b = SetCriterion(**criterion)(changed, labels)[1]
    assert a["loss_mask"].item() == b["loss_mask"].item()
    assert a["loss_dice"].item() == b["loss_dice"].item()


def test_criterion_point_selection_changes_only_flagged_images():
    outputs, labels = _outputs(n=2), _labels(n=2)
    plain = SetCriterion(num_points=40, seed=0)(outputs, labels)[0]
    clean = SetCriterion(num_points=40, seed=0)(outputs, labels, point_selection=[False, True])
    assert clean[0].item() != plain.item()
    # the clean points have lower BCE than random ones on the flagged image
    single = {k: v[:, 1:2] if k.startswith("aux") else v[1:2] for k, v in outputs.items()}
    random_bce = SetCriterion(num_points=400, seed=0)(single, labels[1:2])[1]["loss_mask"]
    clean_bce = SetCriterion(num_points=400, seed=0)(single, labels[1:2],
                                                     point_selection=[True])[1]["loss_mask"]
    assert clean_bce.item() < random_bce.item()


def test_criterion_handles_an_image_without_targets():
    labels = torch.full((1, 8, 8), 255, dtype=torch.long)
    outputs = _outputs(n=1, requires_grad=True)
    total, terms = SetCriterion(num_points=20)(outputs, labels)
    assert terms["loss_mask"].item() == 0.0 and terms["loss_dice"].item() == 0.0
    # all queries are no-object: plain CE (uniform weight 0.1 cancels in the weighted mean)
    logp = outputs["class_logits"].detach().log_softmax(-1)[0, :, 19]
    assert terms["loss_ce"].item() == pytest.approx(-logp.mean().item(), rel=1e-5)
    total.backward()


def test_criterion_rejects_bad_arguments():
    with pytest.raises(OodBenchError, match="sampling"):
        SetCriterion(sampling="random")
    with pytest.raises(OodBenchError, match="one flag per image"):
        SetCriterion(num_points=10)(_outputs(), _labels(), point_selection=[True])
    outputs = {k: v for k, v in _outputs().items() if not k.startswith("aux")}
    with pytest.raises(OodBenchError, match="deep supervision"):
        SetCriterion(num_points=10)(outputs, _labels())
    with pytest.raises(OodBenchError, match="disagree"):
        SetCriterion(num_points=10, deep_supervision=False)(outputs, _labels(n=3))
