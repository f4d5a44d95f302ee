"""Pixel OOD metrics (metric spec v1) against scikit-learn, hand-computed cases and independent
re-implementations of the Hendrycks ("closest") and ood_metrics ("interpolated") FPR@95 code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ood_bench.metrics.curve import ScoreCounts, summarize
from ood_bench.metrics.pixel import (
    METRIC_SPEC_VERSION,
    BoundToleranceWarning,
    PixelOODMetric,
    pixel_ood_metrics,
)

SMALLEST_BUDGET = 2 * 2**20  # one full-resolution page: forces coarsening on spread scores


# ---------------------------------------------------------------- independent references


def hendrycks_fpr_at_recall(labels: np.ndarray, scores: np.ndarray, level: float = 0.95):
    """Hendrycks' ``fpr_and_fdr_at_recall`` as described in research notes (baselines.md §14):
    sort descending (stable), cumulate TP at distinct thresholds, keep the points up to the first
    one with full recall, scan them from that point backwards and take the first argmin of
    |recall - level|; FPR = FP / #negatives. Returns (fpr, threshold)."""
    order = np.argsort(scores, kind="mergesort")[::-1]
    s, y = scores[order], labels[order].astype(np.float64)
    distinct = np.where(np.diff(s))[0]
    idx = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y)[idx]
    fps = 1 + idx - tps
    thresholds = s[idx]
    recall = tps / tps[-1]
    last = tps.searchsorted(tps[-1])
    backwards = slice(last, None, -1)
    recall, fps, thresholds = recall[backwards], fps[backwards], thresholds[backwards]
    cut = np.argmin(np.abs(recall - level))
    return fps[cut] / np.sum(labels == 0), thresholds[cut]


def ood_metrics_fpr_at_95_tpr(labels: np.ndarray, scores: np.ndarray) -> float:
    """``ood_metrics.fpr_at_95_tpr`` semantics: interpolate FPR at TPR 0.95 on ``roc_curve``."""
    fpr, tpr, _ = roc_curve(labels, scores)
    if np.all(tpr < 0.95):
        return 0.0
    if np.all(tpr >= 0.95):
        return float(fpr[tpr >= 0.95].min())
    return float(np.interp(0.95, tpr, fpr))


def first_fpr_at_95(labels: np.ndarray, scores: np.ndarray):
    """SMIYC/Fishyscapes: first ROC point (thresholds high to low) with TPR >= 0.95."""
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    index = np.argmax(tpr >= 0.95)
    return fpr[index], thresholds[index]


# ---------------------------------------------------------------- generated pixel pools

KINDS = ("random", "tied", "constant", "negative", "huge")


@st.composite
def pixel_pools(draw, min_size: int = 2, max_size: int = 300):
    """Scores of one of several shapes (ties, huge ranges...) with labels holding both classes."""
    n = draw(st.integers(min_size, max_size))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    labels = (rng.random(n) < draw(st.floats(0.05, 0.6))).astype(np.uint8)
    labels[0], labels[1] = 0, 1
    kind = draw(st.sampled_from(KINDS))
    if kind == "random":
        scores = rng.standard_normal(n) + labels
    elif kind == "tied":
        scores = rng.integers(0, draw(st.integers(1, 6)), n).astype(np.float64) + 0.5 * labels
    elif kind == "constant":
        scores = np.where(labels == 1, 2.0, -3.0) if draw(st.booleans()) else np.full(n, 0.25)
    elif kind == "negative":
        scores = -25.0 + 3.0 * rng.standard_normal(n) + 2.0 * labels
    else:
        scores = np.sign(rng.standard_normal(n)) * 10.0 ** rng.uniform(-30, 30, n) * (1 + labels)
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    with np.errstate(over="ignore"):
        scores = scores.astype(dtype)
    if dtype == np.float16:
        scores[~np.isfinite(scores)] = 0  # huge values overflow float16
    ignored = rng.random(n) < draw(st.sampled_from([0.0, 0.2]))
    ignored[:2] = False
    labels[ignored] = 255
    return scores, labels


def evaluated(scores: np.ndarray, labels: np.ndarray):
    keep = labels != 255
    return scores[keep], labels[keep]


# ---------------------------------------------------------------- exact mode


@settings(max_examples=60, deadline=None)
@given(pixel_pools(), st.sampled_from(["first", "closest", "interpolated"]))
def test_exact_matches_references(pool, fpr_at):
    scores, labels = pool
    result = pixel_ood_metrics(scores, labels, fpr_at=fpr_at)
    s, y = evaluated(scores, labels)
    assert result["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert result["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert (result["n_pos"], result["n_neg"]) == (int((y == 1).sum()), int((y == 0).sum()))
    if fpr_at == "first":
        fpr, threshold = first_fpr_at_95(y, s)
    elif fpr_at == "closest":
        fpr, threshold = hendrycks_fpr_at_recall(y, s)
    else:
        fpr, threshold = ood_metrics_fpr_at_95_tpr(y, s), first_fpr_at_95(y, s)[1]
    assert result["fpr95"] == pytest.approx(fpr, abs=1e-9)
    assert result["threshold_at_95"] == threshold


@settings(max_examples=25, deadline=None)
@given(pixel_pools(), st.integers(1, 5), st.sampled_from(["first", "closest", "interpolated"]))
def test_exact_streaming_equals_functional(pool, parts, fpr_at):
    scores, labels = pool
    metric = PixelOODMetric(exact=True, fpr_at=fpr_at)
    for chunk_scores, chunk_labels in zip(np.array_split(scores, parts),
                                          np.array_split(labels, parts), strict=True):
        metric.update(chunk_scores, chunk_labels)
    streamed = metric.compute()
    assert streamed.pop("error_bound") == {"auroc": 0.0, "ap": 0.0, "fpr95": 0.0}
    assert streamed == pixel_ood_metrics(scores, labels, fpr_at=fpr_at)


def test_tensors_any_shape_and_dtypes():
    rng = np.random.default_rng(0)
    labels = (rng.random((2, 3, 17, 19)) < 0.3).astype(np.int64)
    scores = rng.standard_normal(labels.shape).astype(np.float32) + labels
    expected = pixel_ood_metrics(scores, labels)
    assert pixel_ood_metrics(torch.from_numpy(scores), torch.from_numpy(labels)) == expected
    bf16 = torch.from_numpy(scores).bfloat16()
    y = labels.ravel()
    result = pixel_ood_metrics(bf16, torch.from_numpy(labels).to(torch.uint8))
    assert result["auroc"] == pytest.approx(roc_auc_score(y, bf16.float().numpy().ravel()))
    assert pixel_ood_metrics(scores, labels.astype(bool))["ap"] == expected["ap"]
    integer_scores = np.round(scores * 4).astype(np.int32)
    assert pixel_ood_metrics(integer_scores, labels)["auroc"] == pytest.approx(
        roc_auc_score(y, integer_scores.ravel()), abs=1e-12)


# ---------------------------------------------------------------- hand-computed cases


def test_hand_computed_fpr_conventions():
    # Descending: 0.9 P, 0.8 N, 0.7 P, 0.6 N, 0.5 N, 0.4 P (3 positives, 3 negatives).
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = np.array([1, 0, 1, 0, 0, 1])
    # Operating points (TP, FP): .9 (1,0) .8 (1,1) .7 (2,1) .6 (2,2) .5 (2,3) .4 (3,3).
    # AUROC: pairs (pos > neg): .9 beats 3, .7 beats 2, .4 beats 0 -> 5/9.
    # AP: recall steps 1/3 at precision 1/1, 2/3, 3/6 -> (1 + 2/3 + 1/2) / 3.
    first = pixel_ood_metrics(scores, labels)
    assert first["auroc"] == pytest.approx(5 / 9)
    assert first["ap"] == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    # TPR >= 0.95 first at threshold 0.4 (TPR 1, FP 3) -> 1.0.
    assert (first["fpr95"], first["threshold_at_95"]) == (1.0, 0.4)
    # closest: recalls 1/3, 1/3, 2/3, 2/3, 2/3, 1 -> 1.0 is closest (0.05 vs 0.283).
    closest = pixel_ood_metrics(scores, labels, fpr_at="closest")
    assert (closest["fpr95"], closest["threshold_at_95"]) == (1.0, 0.4)
    # interpolated between (FPR 1, TPR 2/3) at 0.5 and (FPR 1, TPR 1) at 0.4 -> 1.0.
    interpolated = pixel_ood_metrics(scores, labels, fpr_at="interpolated")
    assert interpolated["fpr95"] == pytest.approx(1.0)


def test_hand_computed_conventions_differ():
    # 20 positives at 10.5..29.5; negatives 29.9, 28, 25 above the 19th positive (11.5), one at
    # 11.0 between the 19th and the 20th (10.5), the rest below.
    pos = np.arange(10, 30) + 0.5
    neg = np.array([29.9, 28.0, 25.0, 11.0, 10.2, 0.0, 1.0, 2.0, 3.0, 4.0])
    scores = np.r_[pos, neg]
    labels = np.r_[np.ones(20, int), np.zeros(10, int)]
    # first: TPR reaches 19/20 = 0.95 at threshold 11.5 with FP 3 -> 0.3.
    first = pixel_ood_metrics(scores, labels)
    assert (first["fpr95"], first["threshold_at_95"]) == (0.3, 11.5)
    # closest: recall 0.95 at 11.5 (FP 3) and 11.0 (FP 4), both at distance 0; Hendrycks'
    # backwards argmin takes the lowest threshold -> 0.4.
    closest = pixel_ood_metrics(scores, labels, fpr_at="closest")
    assert (closest["fpr95"], closest["threshold_at_95"]) == (0.4, 11.0)
    # interpolated: np.interp lands on the last point with TPR 0.95 -> 0.4 as well.
    interpolated = pixel_ood_metrics(scores, labels, fpr_at="interpolated")
    assert (interpolated["fpr95"], interpolated["threshold_at_95"]) == (0.4, 11.5)


def test_hand_computed_interpolation():
    # 10 positives at 10..19; negatives at 19.5, 10.5, 9.5 and 10.0 (tied with a positive).
    # Points (TPR, FPR): ... (0.9, 0.25) at 11, (0.9, 0.5) at 10.5, (1.0, 0.75) at 10,
    # (1.0, 1.0) at 9.5. first: TPR >= 0.95 at 10 -> 0.75; interpolated between (0.9, 0.5)
    # and (1.0, 0.75) -> 0.625; closest: |0.9 - 0.95| == |1.0 - 0.95| in exact arithmetic but
    # not in floats (0.05 vs 0.04999...), so recall 1.0 at threshold 10 -> 0.75.
    scores = np.r_[np.arange(10, 20), 19.5, 10.5, 9.5, 10.0]
    labels = np.r_[np.ones(10, int), 0, 0, 0, 0]
    result = pixel_ood_metrics(scores, labels)
    assert (result["fpr95"], result["threshold_at_95"]) == (0.75, 10.0)
    assert pixel_ood_metrics(scores, labels, fpr_at="interpolated")["fpr95"] == pytest.approx(
        0.625)
    closest = pixel_ood_metrics(scores, labels, fpr_at="closest")
    assert (closest["fpr95"], closest["threshold_at_95"]) == hendrycks_fpr_at_recall(
        labels, scores)


def test_negative_zero_ties_positive_zero():
    scores = np.array([-0.0, 0.0, 0.0, -0.0, 1.0], dtype=np.float32)
    labels = np.array([1, 0, 1, 0, 1])
    for exact in (True, False):
        assert pixel_ood_metrics(scores, labels, exact=exact)["auroc"] == pytest.approx(
            roc_auc_score(labels, scores))


# ---------------------------------------------------------------- binned (streaming) mode


@settings(max_examples=60, deadline=None)
@given(pixel_pools(max_size=400), st.sampled_from(["first", "closest", "interpolated"]),
       st.integers(1, 4))
def test_binned_within_certified_bound(pool, fpr_at, parts):
    scores, labels = pool
    metric = PixelOODMetric(fpr_at=fpr_at, max_state_bytes=SMALLEST_BUDGET)
    for chunk_scores, chunk_labels in zip(np.array_split(scores, parts),
                                          np.array_split(labels, parts), strict=True):
        metric.update(chunk_scores, chunk_labels)
    binned = metric.compute()
    exact = pixel_ood_metrics(scores, labels, fpr_at=fpr_at)
    assert binned["n_pos"] == exact["n_pos"] and binned["n_neg"] == exact["n_neg"]
    for name in ("auroc", "ap", "fpr95"):
        assert abs(binned[name] - exact[name]) <= binned["error_bound"][name] + 1e-12


def test_binned_coarsens_and_stays_within_bound_on_spread_scores():
    rng = np.random.default_rng(3)
    labels = (rng.random(200_000) < 0.05).astype(np.uint8)
    scores = (rng.standard_normal(labels.size) * 3 - 25 + 2 * labels).astype(np.float32)
    metric = PixelOODMetric(fpr_at="closest", max_state_bytes=SMALLEST_BUDGET)
    for start in range(0, labels.size, 50_000):
        metric.update(scores[start:start + 50_000], labels[start:start + 50_000])
    assert metric.state_bytes <= SMALLEST_BUDGET
    binned, exact = metric.compute(), pixel_ood_metrics(scores, labels, fpr_at="closest")
    bound = binned["error_bound"]
    assert 0 < bound["ap"] < 1e-2  # coarsened, and the bound is informative
    for name in ("auroc", "ap", "fpr95"):
        assert abs(binned[name] - exact[name]) <= bound[name]


@settings(max_examples=30, deadline=None)
@given(pixel_pools(max_size=63), st.sampled_from(["first", "closest", "interpolated"]))
def test_binned_bound_is_zero_and_result_exact_without_coarsening(pool, fpr_at):
    # The default budget holds 63 full-resolution pages, so <= 63 pixels never coarsen.
    scores, labels = pool
    scores = scores.astype(np.float32) if scores.dtype == np.float64 else scores
    result = pixel_ood_metrics(scores, labels, fpr_at=fpr_at, exact=False)
    assert result.pop("error_bound") == {"auroc": 0.0, "ap": 0.0, "fpr95": 0.0}
    assert result == pixel_ood_metrics(scores, labels, fpr_at=fpr_at)


def test_float64_rounding_is_not_called_exact():
    scores = np.array([1.0, 1.0 + 1e-12, 2.0, 0.5])  # 1 and 1+1e-12 share a float32 value
    labels = np.array([0, 1, 1, 0])
    result = pixel_ood_metrics(scores, labels, exact=False)
    assert result["error_bound"]["auroc"] > 0
    assert abs(result["auroc"] - roc_auc_score(labels, scores)) <= result["error_bound"]["auroc"]


def test_tolerance_warns_when_bound_is_too_loose():
    rng = np.random.default_rng(4)
    labels = (rng.random(100_000) < 0.1).astype(np.uint8)
    scores = rng.standard_normal(labels.size).astype(np.float32) + labels
    metric = PixelOODMetric(max_state_bytes=SMALLEST_BUDGET, tolerance=1e-9)
    metric.update(scores, labels)
    with pytest.warns(BoundToleranceWarning, match="exceed tolerance"):
        metric.compute()
    relaxed = PixelOODMetric(max_state_bytes=SMALLEST_BUDGET, tolerance=1.0)
    relaxed.update(scores, labels)
    relaxed.compute()  # no warning (pytest runs with warnings visible; none expected here)



def _spread_pool(n: int, seed: int):
    """Float32 scores over many binades (pages appear in every update, out of key order)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.1).astype(np.uint8)
    scores = np.sign(rng.standard_normal(n)) * 10.0 ** rng.uniform(-6, 6, n) * (1 + labels)
    return scores.astype(np.float32), labels


def _piece_counts_reference(counts):
    """``counts()`` rebuilt from ``bins()`` (all non-empty bins in key order), compressed."""
    from ood_bench.metrics.curve import compress
    from ood_bench.metrics.histogram import key_floor_values

    keys, _, total, pos = counts.bins()
    return compress(ScoreCounts(key_floor_values(keys), pos, total - pos))


@pytest.mark.parametrize("budget", [SMALLEST_BUDGET, 64 * 2**20])
def test_binned_counts_every_pixel_across_relayouts_and_permuted_storage(budget):
    # Pages appended after a re-layout make the storage a permutation of key-ordered runs;
    # counts() sums pieces of it in storage order and must equal the key-ordered bins.
    from ood_bench.metrics.curve import compress

    scores, labels = _spread_pool(40_000, 7)
    metric = PixelOODMetric(max_state_bytes=budget)
    for start in range(0, scores.size, 4_000):
        metric.update(scores[start:start + 4_000], labels[start:start + 4_000])
        counts = metric._counts.counts()
        assert counts.pos.sum() == labels[:start + 4_000].sum()
        assert counts.pos.sum() + counts.neg.sum() == start + 4_000
    state = metric._counts
    offsets = state._offset[state._allocated()]
    assert np.any(np.diff(offsets) < 0)  # storage order differs from key order
    reference, pieces = _piece_counts_reference(state), compress(state.counts())
    for name in ("thresholds", "pos", "neg"):
        np.testing.assert_array_equal(getattr(pieces, name), getattr(reference, name))
    exact = pixel_ood_metrics(scores, labels)
    result = metric.compute()
    for name in ("auroc", "ap", "fpr95"):
        assert abs(result[name] - exact[name]) <= result["error_bound"][name]


def test_narrow_counts_widen_before_they_could_overflow(monkeypatch):
    # Bin counts are int32 below NARROW_LIMIT pixels; at the limit the state widens them to
    # int64 (16 bytes per bin, still within the budget) and keeps counting identically.
    from ood_bench.metrics.histogram import BinnedCounts

    scores, labels = _spread_pool(30_000, 8)
    narrow = PixelOODMetric(max_state_bytes=SMALLEST_BUDGET)
    wide = PixelOODMetric(max_state_bytes=SMALLEST_BUDGET)
    for start in range(0, scores.size, 6_000):
        narrow.update(scores[start:start + 6_000], labels[start:start + 6_000])
        with monkeypatch.context() as patch:
            patch.setattr(BinnedCounts, "NARROW_LIMIT", 10_000)
            wide.update(scores[start:start + 6_000], labels[start:start + 6_000])
        assert (wide._counts._bins.dtype == np.int64) == (start + 6_000 >= 10_000)
    assert narrow._counts._bins.dtype == np.int32
    assert narrow.state_bytes < wide.state_bytes <= SMALLEST_BUDGET
    assert wide.compute() == narrow.compute()
    monkeypatch.setattr(BinnedCounts, "NARROW_LIMIT", 40_000)
    merged = PixelOODMetric(max_state_bytes=SMALLEST_BUDGET)
    merged.load_state_dict(wide.state_dict())  # weighted bins into a fresh (int32) state
    assert merged._counts._bins.dtype == np.int32
    merged.load_state_dict(narrow.state_dict(), add=True)  # crosses the limit: widens
    assert merged._counts._bins.dtype == np.int64
    doubled = merged.compute()
    assert (doubled["n_pos"], doubled["n_neg"]) == (2 * labels.sum(), 2 * (labels == 0).sum())
    assert doubled["auroc"] == pytest.approx(narrow.compute()["auroc"], abs=1e-12)


# ---------------------------------------------------------------- merge and state


def _split_metrics(scores, labels, exact, budgets):
    halves = np.array_split(np.arange(scores.size), 2)
    metrics = []
    for half, budget in zip(halves, budgets, strict=True):
        metric = PixelOODMetric(exact=exact, max_state_bytes=budget)
        metric.update(scores[half], labels[half])
        metrics.append(metric)
    return metrics


@settings(max_examples=25, deadline=None)
@given(pixel_pools(min_size=4), st.booleans())
def test_merge_equals_update_on_concatenation(pool, exact):
    scores, labels = pool
    a, b = _split_metrics(scores, labels, exact, (64 * 2**20, 64 * 2**20))
    whole = PixelOODMetric(exact=exact)
    whole.update(scores, labels)
    assert a.merge(b) is a
    merged, single = a.compute(), whole.compute()
    if exact or (a._counts.lossless and whole._counts.lossless):
        assert merged == single
    else:  # bin layouts may differ; both are certified against the exact values
        exact_result = pixel_ood_metrics(scores, labels)
        for result in (merged, single):
            for name in ("auroc", "ap", "fpr95"):
                assert abs(result[name] - exact_result[name]) <= result["error_bound"][name]
    assert (merged["n_pos"], merged["n_neg"]) == (single["n_pos"], single["n_neg"])
    assert a.pool_sizes() == whole.pool_sizes() == (single["n_pos"], single["n_neg"])
    assert whole.pool_sizes() == (int(np.sum(labels == 1)), int(np.sum(labels == 0)))


def test_merge_states_that_coarsened_differently():
    rng = np.random.default_rng(5)
    labels = (rng.random(60_000) < 0.1).astype(np.uint8)
    scores = np.r_[rng.standard_normal(30_000) * 1e-3, rng.standard_normal(30_000) * 50]
    scores = (scores + labels).astype(np.float32)
    exact = pixel_ood_metrics(scores, labels)
    for budgets in ((64 * 2**20, SMALLEST_BUDGET), (SMALLEST_BUDGET, 64 * 2**20)):
        a, b = _split_metrics(scores, labels, False, budgets)
        assert not np.array_equal(a._counts._shift, b._counts._shift)
        result = a.merge(b).compute()
        assert a.state_bytes <= budgets[0]
        assert (result["n_pos"], result["n_neg"]) == (exact["n_pos"], exact["n_neg"])
        for name in ("auroc", "ap", "fpr95"):
            assert abs(result[name] - exact[name]) <= result["error_bound"][name]


def test_merge_coarser_state_over_the_same_pages():
    # Every page of the coarse state already exists in the fine one: merging only re-bins.
    rng = np.random.default_rng(8)
    labels = (rng.random(60_000) < 0.1).astype(np.uint8)
    scores = (rng.standard_normal(60_000) * 50 + labels).astype(np.float32)
    fine, coarse = PixelOODMetric(), PixelOODMetric(max_state_bytes=SMALLEST_BUDGET)
    fine.update(scores, labels)
    coarse.update(scores, labels)
    assert coarse._counts._shift[coarse._counts._allocated()].max() > 0
    result = fine.merge(coarse).compute()
    exact = pixel_ood_metrics(np.r_[scores, scores], np.r_[labels, labels])
    assert (result["n_pos"], result["n_neg"]) == (exact["n_pos"], exact["n_neg"])
    for name in ("auroc", "ap", "fpr95"):
        assert abs(result[name] - exact[name]) <= result["error_bound"][name]


@pytest.mark.parametrize("exact", [True, False])
def test_state_dict_round_trip(exact, tmp_path):
    import h5py

    rng = np.random.default_rng(6)
    labels = (rng.random(5000) < 0.2).astype(np.uint8)
    scores = rng.standard_normal(5000).astype(np.float32) + labels
    metric = PixelOODMetric(exact=exact, max_state_bytes=SMALLEST_BUDGET)
    metric.update(scores, labels)
    state = metric.state_dict()
    assert all(isinstance(v, int | np.ndarray) for v in state.values())
    with h5py.File(tmp_path / "state.h5", "w") as handle:
        for key, value in state.items():
            handle[key] = value
    with h5py.File(tmp_path / "state.h5", "r") as handle:
        loaded = {key: handle[key][()] for key in handle}
    restored = PixelOODMetric(exact=exact, max_state_bytes=SMALLEST_BUDGET)
    restored.load_state_dict(loaded)
    assert restored.compute() == metric.compute()
    torch_state = {k: torch.as_tensor(v.astype(np.int64) if k == "keys" else v)
                   for k, v in state.items()}
    assert PixelOODMetric(exact=exact).load_state_dict(torch_state).compute() == metric.compute()
    metric.reset()
    with pytest.raises(ValueError, match="no positive"):
        metric.compute()


def test_curves_match_sklearn():
    rng = np.random.default_rng(7)
    labels = (rng.random(3000) < 0.3).astype(np.uint8)
    scores = np.round(rng.standard_normal(3000) * 3) + labels
    metric = PixelOODMetric(exact=True)
    metric.update(scores, labels)
    curves = metric.curves()
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    sklearn_points = set(zip(thresholds.tolist(), fpr.tolist(), tpr.tolist(), strict=True))
    roc = curves["roc"]
    ours = list(zip(roc["thresholds"].tolist(), roc["fpr"].tolist(), roc["tpr"].tolist(),
                    strict=True))
    assert ours[0] == (np.inf, 0.0, 0.0) and ours[-1][1:] == (1.0, 1.0)
    assert set(ours[1:]) <= sklearn_points  # only negative-only runs are merged
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(roc_auc_score(labels, scores))
    pr = curves["pr"]
    assert np.all(np.diff(pr["thresholds"]) < 0)
    area = np.sum(np.diff(np.r_[0, pr["recall"]]) * pr["precision"])
    assert area == pytest.approx(average_precision_score(labels, scores))


def test_spec_version():
    assert METRIC_SPEC_VERSION == "1"
    assert PixelOODMetric().state_dict()["spec_version"] == 1


# ---------------------------------------------------------------- bound tightness (curve level)


def _ap_gaps(a, c, p, n):
    """The AP change (x n_pos) of a bin at its extremes, by direct summation."""
    tied = p * (a + p) / (c + p + n)
    best = p * (a + p) / (c + p)
    worst = sum((a + j) / (c + n + j) for j in range(1, p + 1))
    return best - tied, tied - worst


def test_ap_bound_each_side_is_needed():
    p_total = 20
    for case, (a, c, p, n) in {"positives first": (0, 5, 10, 10),
                               "negatives first": (0, 100, 20, 20)}.items():
        upper, lower = _ap_gaps(a, c, p, n)
        top = [0] * (c - a) + [1] * a
        inside = [1] * p + [0] * n if case == "positives first" else [0] * n + [1] * p
        rest = p_total - a - p
        scores, labels = [], []
        value = 1000.0
        for label in top:
            scores.append(value)
            labels.append(label)
            value -= 1
        for index, label in enumerate(inside):  # positives first: tied; else all distinct
            tied = case == "positives first" and label == 1 and index > 0
            value -= 0 if tied else 1
            scores.append(value)
            labels.append(label)
        for label in [1] * rest + [0] * 7:
            value -= 1
            scores.append(value)
            labels.append(label)
        scores, labels = np.array(scores), np.array(labels)
        exact = pixel_ood_metrics(scores, labels)
        # binned: the bin's pixels share one threshold
        in_bin = np.zeros(scores.size, bool)
        in_bin[len(top):len(top) + len(inside)] = True
        binned_scores = scores.copy()
        binned_scores[in_bin] = scores[in_bin].min()
        counts_exact = pixel_ood_metrics(binned_scores, labels)  # the tied (binned) value
        binned_points = summarize(_counts_of(binned_scores, labels), "first", binned=True)
        assert binned_points["ap"] == pytest.approx(counts_exact["ap"])
        error = abs(binned_points["ap"] - exact["ap"]) * labels.sum()
        side = upper if case == "positives first" else lower
        other = lower if case == "positives first" else upper
        assert side > other  # the case is decided by this side of the bound
        assert error == pytest.approx(side, rel=1e-9)
        assert binned_points["error_bound"]["ap"] * labels.sum() >= error
        assert binned_points["error_bound"]["ap"] * labels.sum() <= side * 1.02


def _counts_of(scores, labels):
    values = np.unique(scores)
    index = np.searchsorted(values, scores)
    pos = np.bincount(index, labels == 1, values.size).astype(np.int64)
    neg = np.bincount(index, labels == 0, values.size).astype(np.int64)
    return ScoreCounts(values, pos, neg)


@pytest.mark.parametrize("fpr_at, layout, lost", [
    # closest: recall 0.93 before bin Y (3 tied positives, no negative) -> 0.96 after it; the
    # exact curve keeps recall 0.96 through the 3 negatives leading bin Z (then 4 positives):
    # exact FP = binned FP + 3, all in the bin after the recall level.
    ("closest", [(1, 93, False), (1, 3, "Y"), (0, 3, "Z"), (1, 4, "Z"), (0, 7, False)], 3),
    # interpolated: recall exactly 0.95 after 95 positives; bin W starts with 2 negatives: the
    # exact last point at TPR 0.95 has 2 more false positives than the binned corner.
    ("interpolated", [(1, 95, False), (0, 2, "W"), (1, 5, "W"), (0, 8, False)], 2),
])
def test_fpr_bound_covers_points_beyond_the_crossing_bin(fpr_at, layout, lost):
    scores, labels, bins = [], [], []
    value = 1000.0
    for label, count, bin_name in layout:
        for _ in range(count):
            value -= 0 if (bin_name == "Y" and labels and labels[-1] == 1 and bins
                           and bins[-1] == "Y") else 1
            scores.append(value)
            labels.append(label)
            bins.append(bin_name)
    scores, labels = np.array(scores), np.array(labels)
    binned_scores = scores.copy()
    for name in {b for b in bins if b}:
        members = np.array([b == name for b in bins])
        binned_scores[members] = scores[members].min()
    exact = pixel_ood_metrics(scores, labels, fpr_at=fpr_at)
    binned = summarize(_counts_of(binned_scores, labels), fpr_at, binned=True)
    n_neg = int((labels == 0).sum())
    assert abs(binned["fpr95"] - exact["fpr95"]) * n_neg == pytest.approx(lost)
    assert binned["error_bound"]["fpr95"] * n_neg >= lost
