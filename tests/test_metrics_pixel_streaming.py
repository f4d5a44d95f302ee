"""Streaming (binned) pixel OOD metric internals that only speed depends on: pixels of new
pages set aside until the end of an update, the block-by-block reading of the state and of the
curve (``blocks()``, ``summarize_blocks``), the AP bound of single-positive bins and the fast
input checks. Each must give exactly the plain path's counts and metrics."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from ood_bench.metrics.curve import ScoreCounts, compress, summarize
from ood_bench.metrics.histogram import BinnedCounts, key_floor_values
from ood_bench.metrics.pixel import PixelOODMetric, pixel_ood_metrics

SMALLEST_BUDGET = 2 * 2**20


def _narrow_pool(n: int, seed: int):
    """Float32 scores in [1, 1.0625): 8 pages, all at full resolution (a lossless state)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.05).astype(np.uint8)
    scores = (1 + rng.random(n) / 16 * (0.5 + 0.5 * labels)).astype(np.float32)
    return scores, labels


def _spread_pool(n: int, seed: int):
    """Float32 scores over many binades (a state that coarsens on a small budget)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.1).astype(np.uint8)
    scores = np.sign(rng.standard_normal(n)) * 10.0 ** rng.uniform(-6, 6, n) * (1 + labels)
    return scores.astype(np.float32), labels


def _streamed(scores, labels, chunk, budget=64 * 2**20):
    metric = PixelOODMetric(max_state_bytes=budget)
    for start in range(0, scores.size, chunk):
        metric.update(scores[start:start + chunk], labels[start:start + chunk])
    return metric


def _assert_exact(metric, scores, labels):
    assert metric._counts.lossless
    result = metric.compute()
    assert result.pop("error_bound") == {"auroc": 0.0, "ap": 0.0, "fpr95": 0.0}
    assert result == pixel_ood_metrics(scores, labels)


@pytest.mark.parametrize("aside", [100, 5000])
def test_new_pages_after_the_first_slice(monkeypatch, aside):
    # With ASIDE 100 the first slice gives bins to its pages at once (1000 pixels need them),
    # with 5000 it sets them aside too. Slices 2 and 3 bring 3 and 600 pixels of new pages
    # (one page in common): set aside, and counted after the last slice.
    monkeypatch.setattr(BinnedCounts, "SLICE", 1000)
    monkeypatch.setattr(BinnedCounts, "ASIDE", aside)
    scores, labels = _narrow_pool(6000, 3)
    scores[1000:1003] = np.float32(3.5)  # a page of [2, 4)
    scores[2000:2600] = np.float32(3.5) + np.arange(600, dtype=np.float32) / 2**10
    labels[1001] = labels[2100] = 1
    metric = _streamed(scores, labels, scores.size)
    _assert_exact(metric, scores, labels)


@pytest.mark.parametrize("block, budget", [(1, SMALLEST_BUDGET), (5, SMALLEST_BUDGET),
                                           (64, SMALLEST_BUDGET), (1 << 12, 64 * 2**20),
                                           (1 << 16, 64 * 2**20)])
def test_blockwise_scan_equals_key_ordered_bins(monkeypatch, block, budget):
    # blocks() cuts key-ordered groups of pages into pieces and finds each piece's first
    # non-empty bin from running totals; tiny blocks make stretches span blocks (a group is at
    # least one page, so BLOCK 1 gives a block per page).
    monkeypatch.setattr(BinnedCounts, "BLOCK", block)
    scores, labels = _spread_pool(20_000, 5)
    state = _streamed(scores, labels, 2_500, budget)._counts
    keys, _, total, pos = state.bins()
    reference = compress(ScoreCounts(key_floor_values(keys), pos, total - pos))
    pieces = compress(state.counts())
    for name in ("thresholds", "pos", "neg"):
        np.testing.assert_array_equal(getattr(pieces, name), getattr(reference, name))


def test_empty_binned_state_has_no_counts():
    assert BinnedCounts(SMALLEST_BUDGET).counts().thresholds.size == 0


def test_finite_scores_whose_sum_overflows_are_accepted():
    scores = np.array([3e38, 3e38, -3e38, 1.0, 0.5, 2e38], dtype=np.float32)
    labels = np.array([1, 0, 0, 1, 0, 1], dtype=np.uint8)
    for exact in (True, False):
        result = pixel_ood_metrics(scores, labels, exact=exact)
        assert result["auroc"] == pytest.approx(roc_auc_score(labels, scores))
        assert result["ap"] == pytest.approx(average_precision_score(labels, scores))


@pytest.mark.parametrize("ignore_index", [0, 1])
def test_binary_labels_with_ignore_index_zero_or_one(ignore_index):
    # Labels 0/1 alone skip the label checks, unless ignore_index is itself 0 or 1.
    scores = np.array([0.1, 0.9, 0.4, 0.7], dtype=np.float32)
    labels = np.array([0, 1, 0, 1], dtype=np.uint8)
    missing = "negative" if ignore_index == 0 else "positive"
    with pytest.raises(ValueError, match=f"no {missing}"):
        pixel_ood_metrics(scores, labels, ignore_index=ignore_index)


def test_bins_with_one_positive_and_no_negative_cost_nothing():
    # Only one order of the pixels inside such a bin exists: binned == exact, bound 0; a
    # second positive or a negative in a bin makes the AP bound positive.
    thresholds = np.arange(6, dtype=np.float64)
    single = ScoreCounts(thresholds, np.array([0, 1, 0, 1, 0, 1]), np.array([3, 0, 2, 0, 1, 0]))
    assert summarize(single, "first", binned=True)["error_bound"]["ap"] == 0.0
    for pos, neg in (([0, 2, 0, 1, 0, 1], [3, 0, 2, 0, 1, 0]),
                     ([0, 1, 0, 1, 0, 1], [3, 1, 2, 0, 1, 0])):
        counts = ScoreCounts(thresholds, np.array(pos), np.array(neg))
        assert summarize(counts, "first", binned=True)["error_bound"]["ap"] > 0


class PlainBinnedCounts(BinnedCounts):
    """The plain path of a re-layout and of ``bins()``: every stored bin is re-added at its
    key with ``np.add.at``, and the bins are sorted by key."""

    def _carry_over(self, pages, offsets, shifts, bins, pos):
        sizes = 1 << (self.PAGE_BITS - shifts)
        page = np.repeat(pages, sizes)
        within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        old_index = np.repeat(offsets, sizes) + within
        low = within << np.repeat(shifts, sizes)
        new_index = self._offset[page] + (low >> self._shift[page])
        np.add.at(self._bins, new_index, bins[old_index].astype(self._bins.dtype))
        np.add.at(self._pos, new_index, pos[old_index].astype(self._pos.dtype))

    def bins(self):
        keys, shifts, total, pos = super().bins()
        order = np.argsort(keys, kind="stable")
        return keys[order], shifts[order], total[order], pos[order]


def _assert_same_state(state, plain):
    for name in ("_offset", "_shift", "_used", "_level", "_seen_total", "_seen_pos"):
        np.testing.assert_array_equal(getattr(state, name), getattr(plain, name))
    assert state._bins.dtype == plain._bins.dtype
    for name in ("_bins", "_pos"):
        np.testing.assert_array_equal(getattr(state, name)[:state._used + 1],
                                      getattr(plain, name)[:plain._used + 1])
    for ours, theirs in zip(state.bins(), plain.bins(), strict=True):
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)
    for name in ("thresholds", "pos", "neg"):
        np.testing.assert_array_equal(getattr(state.counts(), name),
                                      getattr(plain.counts(), name))


@pytest.mark.parametrize("seed", range(4))
def test_merges_by_slices_equal_the_plain_path(seed):
    # Chunk states on budgets of their own (pages coarser or finer than the run state's) merged
    # into a small run state, with updates in between: re-layouts coarsen some pages and copy
    # others, appended pages make the storage leave key order. The plain state gets the same
    # bins shuffled (the order of a state's bins must not matter); every third chunk is merged
    # page by page (``BinnedCounts.merge``), which must give the same state.
    rng = np.random.default_rng(seed)
    state, plain = BinnedCounts(SMALLEST_BUDGET), PlainBinnedCounts(SMALLEST_BUDGET)
    for step in range(6):
        scores, labels = _spread_pool(int(rng.integers(2_000, 30_000)), 10 * seed + step)
        if step % 3 == 1:
            state.add_scores(scores, labels == 1)
            plain.add_scores(scores, labels == 1)
        else:
            chunk = _streamed(scores, labels, 5_000, int(rng.choice([2, 3, 8])) * 2**20)
            keys, shifts, total, pos = chunk._counts.bins()
            if step % 3 == 2:  # page by page, straight from the chunk's storage
                state.merge(chunk._counts)
            else:
                state.add_bins(keys, shifts, total, pos)
            shuffle = rng.permutation(keys.size)
            plain.add_bins(keys[shuffle], shifts[shuffle], total[shuffle], pos[shuffle])
        _assert_same_state(state, plain)
    assert not state.lossless  # pages were coarsened


@pytest.mark.parametrize("block", [1, 7, 50])
def test_blockwise_curve_sums_equal_one_block(monkeypatch, block):
    # AUROC, AP and their bounds are summed block by block (with the cumulative counts carried
    # in); any block size gives the one-block values, and AUROC / AP equal scikit-learn.
    from ood_bench.metrics import curve
    from ood_bench.metrics.histogram import distinct_counts

    scores, labels = _spread_pool(3_000, 9)
    scores = np.round(np.log10(np.abs(scores)), 1).astype(np.float32)  # heavy ties: wide bins
    counts = distinct_counts(scores, labels == 1)
    assert counts.thresholds.size > 2 * block  # several blocks
    whole = summarize(counts, "first", binned=True)
    monkeypatch.setattr(curve, "_BLOCK", block)
    blocked = summarize(counts, "first", binned=True)
    assert blocked["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert blocked["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    for name in ("auroc", "ap", "fpr95"):
        assert blocked["error_bound"][name] > 0
        assert blocked["error_bound"][name] == pytest.approx(whole["error_bound"][name],
                                                             rel=1e-12)


def test_tpr_level_found_on_integer_counts_equals_float_search():
    # FPR@95 and its bound locate the 95 % TPR level on the integer true-positive counts; it
    # must pick the points the float64 TPR array would, including TPR exactly 0.95 (n % 20 == 0).
    from ood_bench.metrics.curve import OperatingPoints, _level_points

    for n_pos in [*range(1, 400), 10**6, 20 * 10**6 + 1, 20 * 10**9, 3 * 10**12 + 7]:
        near = 0.95 * n_pos
        tp = np.unique(np.clip(np.r_[0, np.arange(int(near) - 3, int(near) + 4), n_pos], 0, n_pos))
        points = OperatingPoints(tp.astype(np.float64), tp, tp, tp, tp, n_pos, n_pos)
        tpr = tp / n_pos
        assert _level_points(points) == (int(np.searchsorted(tpr, 0.95)),
                                         int(np.searchsorted(tpr, 0.95, side="right")))


def _full_curve_fpr(counts, fpr_at):
    """FPR@95, its threshold and its bound read on the whole curve (no window)."""
    from ood_bench.metrics.curve import _fpr_bound, fpr_at_95, operating_points

    points = operating_points(compress(counts))
    return (*fpr_at_95(points, fpr_at), _fpr_bound(points, fpr_at))


@pytest.mark.parametrize("fpr_at", ["first", "closest", "interpolated"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 15])
def test_streamed_summary_equals_the_whole_curve(monkeypatch, fpr_at, chunk):
    # summarize_blocks reads the counts in blocks cut anywhere (negative-only runs split across
    # blocks) and the curve in chunks of ``chunk`` points, keeping only a window around the 95 %
    # TPR level: every result must equal one block, and FPR@95, its threshold and its bound must
    # equal those read on the whole curve, whichever chunk the level falls in.
    from ood_bench.metrics import curve
    from ood_bench.metrics.curve import summarize_blocks

    monkeypatch.setattr(curve, "_BLOCK", chunk)
    rng = np.random.default_rng(chunk)
    for trial in range(40):
        n = int(rng.integers(2, 60))
        thresholds = np.sort(rng.choice(1000, n, replace=False)).astype(np.float64)
        pos = rng.integers(0, 3, n) * (rng.random(n) < rng.uniform(0.1, 0.9))
        neg = rng.integers(0, 4, n)
        pos[rng.integers(n)] += 1
        neg[rng.integers(n)] += 1
        counts = ScoreCounts(thresholds, pos, neg)
        whole = summarize(counts, fpr_at, binned=True)
        cuts = np.sort(rng.choice(np.arange(1, n), int(rng.integers(0, n)), replace=False))
        edges = np.r_[0, cuts, n]
        blocks = [ScoreCounts(thresholds[a:b], pos[a:b], neg[a:b])
                  for a, b in zip(edges[-2::-1], edges[:0:-1], strict=True)]  # highest first
        streamed = summarize_blocks(blocks, int(pos.sum()), int(neg.sum()), fpr_at, binned=True)
        assert streamed == whole, trial
        fpr, threshold, bound = _full_curve_fpr(counts, fpr_at)
        assert (whole["fpr95"], whole["threshold_at_95"]) == (fpr, threshold), trial
        assert whole["error_bound"]["fpr95"] == (bound + 1e-12 if bound > 0 else 0.0), trial


def test_streamed_summary_checks_the_pool_sizes():
    from ood_bench.metrics.curve import summarize_blocks

    counts = ScoreCounts(np.arange(3.0), np.array([0, 1, 1]), np.array([2, 0, 1]))
    with pytest.raises(ValueError, match="no positive"):
        summarize_blocks([counts], 0, 3, "first")
    with pytest.raises(ValueError, match="expected 3 and 3"):
        summarize_blocks([counts], 3, 3, "first")


@pytest.mark.parametrize("pending", [1, 700, 10**9])
def test_held_positives_give_the_counts_of_immediate_ones(monkeypatch, pending):
    # Positives are counted in held-back batches; every reader and every re-layout flushes them
    # first. Updates, page-by-page merges, re-layouts (a small budget), the int64 widening and
    # a state dict round trip must give the bins and metrics of counting each at once.
    def run(hold):
        monkeypatch.setattr(BinnedCounts, "PENDING", hold)
        monkeypatch.setattr(BinnedCounts, "NARROW_LIMIT", 60_000)
        rng = np.random.default_rng(11)
        metric = PixelOODMetric(max_state_bytes=SMALLEST_BUDGET)
        for step in range(5):
            scores, labels = _spread_pool(int(rng.integers(5_000, 25_000)), 20 + step)
            if step == 2:
                other = _streamed(scores, labels, 3_000, 3 * 2**20)
                metric.merge(other)
            else:
                metric.update(scores, labels)
        copy = PixelOODMetric(max_state_bytes=SMALLEST_BUDGET)
        copy.load_state_dict(metric.state_dict())
        return metric._counts.bins(), metric.compute(), copy.compute(), metric._counts
    held, immediate = run(pending), run(0)
    for ours, theirs in zip(held[0], immediate[0], strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert held[1:3] == immediate[1:3]
    assert held[3]._bins.dtype == np.int64 and not held[3].lossless  # widened and coarsened


@pytest.mark.parametrize("size", [0, 3, 4096, 4097, 100_000])
def test_page_sums_by_sort_and_by_directory_agree_with_a_dict(size):
    # Few entries are summed after a sort, many over the page directory (4096 is the switch).
    rng = np.random.default_rng(size)
    pages = rng.integers(0, 1 << 16, size) // rng.integers(1, 5000, size).clip(1)
    total = rng.integers(1, 9, size)
    hit = rng.random(size) < 0.3
    distinct, page_total, page_pos = BinnedCounts(SMALLEST_BUDGET)._page_sums(pages, total, hit)
    expected: dict[int, list[int]] = {}
    for page, weight, positive in zip(pages.tolist(), total.tolist(), hit.tolist(), strict=True):
        sums = expected.setdefault(page, [0, 0])
        sums[0] += weight
        sums[1] += positive
    assert distinct.tolist() == sorted(expected)
    assert page_total.tolist() == [expected[page][0] for page in sorted(expected)]
    assert page_pos.tolist() == [expected[page][1] for page in sorted(expected)]
