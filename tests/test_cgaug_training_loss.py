"""CG-Aug's loss: the relative contrastive terms, small-loss selection and the CE parts against
hand-computed values on tiny tensors."""

import math

import numpy as np
import pytest
import torch

from ood_bench.cgaug.loss import (
    generated_cross_entropy,
    noise_aware_loss,
    original_cross_entropy,
    relative_contrastive_loss,
    small_loss_selection,
)
from ood_bench.errors import OodBenchError


def pair(original, generated):
    """A 2×1×W batch: one original row and its generated partner."""
    return torch.tensor([[original], [generated]])


def test_contrastive_terms_by_hand():
    labels = pair([0, 1, 254, 255], [0, 254, 3, 255])
    scores = pair([1.0, 2.0, 4.0, 0.0], [9.0, 5.0, 6.0, 100.0]).requires_grad_()
    loss, terms = relative_contrastive_loss(scores, labels, (10, 5, 5))
    # Ω_in = {1, 2}, Ω_aug = {9, 6}, Ω_out = {4, 5}: n = 2 and every hinge is active, so any
    # one-to-one pairing gives mean(in) + m − mean(out).
    assert terms["in_out"] == pytest.approx(1.5 + 10 - 4.5)
    assert terms["aug_out"] == pytest.approx(7.5 + 5 - 4.5)
    # Same location: only pixel 0 is in-distribution in both; 9 − 1 − 5 = 3. The void pixel's
    # 100 and the object pixels take no part.
    assert terms["aug_orig"] == pytest.approx(3.0)
    assert terms["same_location"] == 1 and terms["pairs"] == 2
    assert loss.item() == pytest.approx(7 + 8 + 3)
    loss.backward()
    # Original pixel 0: +1/2 from term 1, −1 from term 3; its partner: +1/2 (term 2) + 1 (term 3).
    expected = torch.tensor([[[0.5 - 1, 0.5, -1.0, 0.0]], [[0.5 + 1, -1.0, 0.5, 0.0]]])
    assert torch.allclose(scores.grad, expected)


def test_pairs_are_random_one_to_one_and_truncated_to_the_smallest_set():
    labels = pair([0, 1, 2, 254], [3, 4, 254, 255])
    scores = pair([1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 0.0])
    seed = 7
    loss, terms = relative_contrastive_loss(scores, labels, (10, 3, 5),
                                            torch.Generator().manual_seed(seed))
    # Replay the pairing: Ω_in, Ω_aug, Ω_out permuted in that order, truncated to n = 2.
    g = torch.Generator().manual_seed(seed)
    s_in = torch.tensor([1.0, 2.0, 3.0])[torch.randperm(3, generator=g)[:2]]
    s_aug = torch.tensor([5.0, 6.0])[torch.randperm(2, generator=g)[:2]]
    s_out = torch.tensor([4.0, 7.0])[torch.randperm(2, generator=g)[:2]]
    by_hand_1 = sum(max(0.0, a + 10 - o) for a, o in zip(s_in.tolist(), s_out.tolist(),
                                                         strict=True)) / 2
    by_hand_2 = sum(max(0.0, a + 3 - o) for a, o in zip(s_aug.tolist(), s_out.tolist(),
                                                        strict=True)) / 2
    assert terms["pairs"] == 2
    assert terms["in_out"] == pytest.approx(by_hand_1)
    assert terms["aug_out"] == pytest.approx(by_hand_2)
    # Pixels 0 and 1 are in-distribution in both: (5 − 1 − 5)⁺ = 0, (6 − 2 − 5)⁺ = 0.
    assert terms["aug_orig"] == 0.0


def test_an_empty_ood_set_contributes_zero_with_a_graph():
    labels = pair([0, 1], [1, 0])
    scores = pair([0.0, 1.0], [20.0, 0.0]).requires_grad_()
    loss, terms = relative_contrastive_loss(scores, labels)
    assert terms["in_out"] == terms["aug_out"] == 0.0 and terms["pairs"] == 0
    assert loss.item() == pytest.approx((20 - 0 - 5) / 2)  # only pixel 0's same-location term
    loss.backward()
    assert scores.grad is not None
    nothing, _ = relative_contrastive_loss(scores, pair([255, 254], [255, 255]))
    assert nothing.item() == 0.0 and nothing.requires_grad


def test_contrastive_loss_rejects_odd_batches_and_bad_margins():
    with pytest.raises(OodBenchError, match="2B images"):
        relative_contrastive_loss(torch.zeros(3, 2, 2), torch.zeros(3, 2, 2, dtype=torch.long))
    with pytest.raises(OodBenchError, match="m1, m2, m3"):
        relative_contrastive_loss(torch.zeros(2, 2, 2), torch.zeros(2, 2, 2, dtype=torch.long),
                                  (1, 2))


def test_small_loss_selection_keeps_exactly_the_lowest_80_percent():
    rng = np.random.default_rng(0)
    loss = rng.integers(0, 6, size=(2, 7, 9)).astype(np.float32)  # many ties
    valid = rng.random((2, 7, 9)) < 0.8
    kept = small_loss_selection(torch.from_numpy(loss), torch.from_numpy(valid), 0.8).numpy()
    positions = np.flatnonzero(valid.ravel())
    order = positions[np.lexsort((positions, loss.ravel()[positions]))]  # by loss, then index
    expected = np.zeros(loss.size, bool)
    expected[order[: int(0.8 * valid.sum())]] = True
    assert np.array_equal(kept.ravel(), expected)
    assert kept.sum() == int(0.8 * valid.sum()) and not (kept & ~valid).any()
    assert loss[kept].max() <= loss[valid & ~kept].min()


def test_small_loss_selection_rejects_a_bad_ratio():
    with pytest.raises(OodBenchError, match="ratio"):
        small_loss_selection(torch.zeros(2), torch.ones(2, dtype=torch.bool), 0.0)


def test_original_cross_entropy_counts_ignored_pixels_in_the_denominator():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]).T.reshape(1, 2, 1, 2)
    labels = torch.tensor([[[1, 255]]])
    # Pixel 0: p(class 1) = 3/4; pixel 1 is ignored but still counts: (−log 0.75 + 0) / 2.
    assert original_cross_entropy(logits, labels).item() == pytest.approx(-math.log(0.75) / 2)
    assert original_cross_entropy(logits, torch.tensor([[[1, 254]]])).item() == pytest.approx(
        -math.log(0.75) / 2)


def test_generated_cross_entropy_averages_over_kept_pixels():
    # Five valid pixels with losses −log p; the 80 % kept are the four lowest.
    probabilities = [0.9, 0.1, 0.5, 0.7, 0.3]
    logits = torch.tensor([[math.log(p), math.log(1 - p)] for p in probabilities])
    logits = logits.T.reshape(1, 2, 1, 5)
    labels = torch.tensor([[[0, 0, 0, 0, 0]]])
    loss, kept = generated_cross_entropy(logits, labels, 0.8)
    expected = -sum(math.log(p) for p in (0.9, 0.5, 0.7, 0.3)) / 4
    assert kept == 4 and loss.item() == pytest.approx(expected, rel=1e-6)
    everything, kept_all = generated_cross_entropy(logits, labels, None)
    assert kept_all == 5
    assert everything.item() == pytest.approx(-sum(map(math.log, probabilities)) / 5, rel=1e-6)


def test_noise_aware_loss_weights_the_parts():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 2, 3)
    scores = torch.randn(2, 2, 3)
    labels = torch.tensor([[[0, 1, 254], [2, 255, 0]], [[0, 254, 1], [2, 2, 255]]])
    generator = torch.Generator().manual_seed(1)
    loss, terms = noise_aware_loss(logits, scores, labels, ce_weights=(50, 10),
                                   generator=generator)
    contrastive, _ = relative_contrastive_loss(scores, labels,
                                               generator=torch.Generator().manual_seed(1))
    ce_orig = original_cross_entropy(logits[:1], labels[:1])
    ce_aug, kept = generated_cross_entropy(logits[1:], labels[1:], 0.8)
    assert kept == 3  # floor(0.8 · 4 valid pixels)
    assert loss.item() == pytest.approx(50 * ce_orig.item() + 10 * ce_aug.item()
                                        + contrastive.item(), rel=1e-6)
    assert terms["ce_orig"] == pytest.approx(ce_orig.item())
