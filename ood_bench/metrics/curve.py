"""Curve arithmetic of metric spec v1, shared by every pixel OOD metric path.

Exact and binned metrics both reduce the pooled pixels to :class:`ScoreCounts`: distinct
thresholds (ascending) with the number of positive (OOD) and negative (in-distribution) pixels
at each. Everything else -- AUROC, AP, the three FPR@95 conventions, plotting curves and the
certified error bounds of binned counts -- is computed here from those counts, once, in one
streaming pass (:func:`summarize_blocks`) that takes the counts a block at a time.

For binned counts each threshold stands for a bin of scores whose internal order is unknown;
the ``error_bound`` of :func:`summarize_blocks` bounds how far each metric can be from its value
on the exact scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import OodBenchError
from .spec import FPR_CONVENTIONS, TPR_LEVEL

#: Absolute slack added to non-zero bounds to cover float rounding of the metric arithmetic.
_ROUNDING_SLACK = 1e-12


@dataclass(frozen=True)
class ScoreCounts:
    """Positive and negative pixel counts per distinct threshold, thresholds ascending."""

    thresholds: np.ndarray  # float64, strictly increasing
    pos: np.ndarray  # int64
    neg: np.ndarray  # int64


def concat_fields(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Each field of ``parts`` (equally long tuples of arrays) concatenated over the parts."""
    return tuple(np.concatenate(field) for field in zip(*parts, strict=True))


def compress(counts: ScoreCounts) -> ScoreCounts:
    """Merge every run of consecutive negative-only thresholds into one, at the run's lowest.

    Inside such a run the true-positive count is constant, so AUROC, AP, all FPR@95 conventions
    (including "closest", which picks the lowest threshold of a recall level) and the shape of
    the ROC and PR curves are unchanged, while the size drops to at most ``2 * #positive
    thresholds + 1``.
    """
    has_pos = counts.pos > 0
    if has_pos.size == 0:
        return counts
    starts = np.ones(has_pos.size, dtype=bool)
    starts[1:] = has_pos[1:] | has_pos[:-1]
    if starts.all():  # already compressed
        return counts
    # A merged threshold holds no positive: add its negatives to its run's first threshold.
    index = np.flatnonzero(starts)
    merged = np.flatnonzero(~starts)
    run = np.searchsorted(index, merged, side="right") - 1
    pos, neg = counts.pos[index], counts.neg[index]
    np.add.at(neg, run, counts.neg[merged])
    return ScoreCounts(counts.thresholds[index], pos, neg)


@dataclass(frozen=True)
class OperatingPoints:
    """Cumulative counts when predicting ``score >= threshold``, thresholds descending.

    Either the whole curve or a window of it (see :class:`_CrossingWindow`): ``tp0``, ``fp0``
    are the cumulative counts before the first point (0 for the whole curve).
    """

    thresholds: np.ndarray
    pos: np.ndarray  # positives at each threshold
    neg: np.ndarray
    tp: np.ndarray  # cumulative true positives (int64)
    fp: np.ndarray  # cumulative false positives (int64)
    n_pos: int
    n_neg: int
    tp0: int = 0
    fp0: int = 0


def _check_pool(n_pos: int, n_neg: int) -> None:
    if n_pos == 0 or n_neg == 0:
        missing = "positive (OOD, label 1)" if n_pos == 0 else "negative (label 0)"
        raise OodBenchError(
            f"the pooled pixels contain no {missing} pixel ({n_pos} positive, "
            f"{n_neg} negative): AUROC, AP and FPR@95 are undefined"
        )


def operating_points(counts: ScoreCounts) -> OperatingPoints:
    """The whole curve: scan the thresholds from high to low; raise if the pool lacks a class."""
    pos = counts.pos[::-1].astype(np.int64, copy=False)  # reversed views: no copies
    neg = counts.neg[::-1].astype(np.int64, copy=False)
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    n_pos, n_neg = (int(tp[-1]), int(fp[-1])) if tp.size else (0, 0)
    _check_pool(n_pos, n_neg)
    return OperatingPoints(counts.thresholds[::-1], pos, neg, tp, fp, n_pos, n_neg)


def check_fpr_at(fpr_at: str) -> str:
    """Validate an FPR@95 convention name."""
    if fpr_at not in FPR_CONVENTIONS:
        raise OodBenchError(f"unknown fpr_at {fpr_at!r}; expected one of {FPR_CONVENTIONS}")
    return fpr_at


#: Operating points per chunk of the summations (a fixed cut of the descending points, so the
#: float sums do not depend on how the counts arrive); a chunk's temporaries stay in the CPU cache.
_BLOCK = 1 << 15


def _auroc_terms(pos: np.ndarray, neg: np.ndarray, tp: np.ndarray) -> float:
    """Sum of ``neg * (tp - pos / 2)``: each threshold's negatives times the true positives
    ranked above them, ties counted half."""
    tp_before_plus_half = tp - 0.5 * pos
    tp_before_plus_half *= neg
    return tp_before_plus_half.sum()


def _pair_terms(pos: np.ndarray, neg: np.ndarray) -> float:
    """Sum of ``pos * neg``: positive-negative pairs tied in one threshold."""
    return np.multiply(pos, neg, dtype=np.float64).sum()


def _ap_terms(pos: np.ndarray, tp: np.ndarray, fp: np.ndarray) -> float:
    """Sum of ``pos * precision``: thresholds without positives add 0 (no selection needed;
    ``tp + fp`` is 0 only before the first threshold with pixels)."""
    precision = tp / np.maximum(tp + fp, 1)
    precision *= pos
    return precision.sum()


def _tpr_levels(n_pos: int) -> tuple[int, int]:
    """The smallest true-positive count whose TPR (the float64 ``tp / n_pos``, monotone in
    ``tp``) reaches 0.95, and the largest whose TPR is at most 0.95."""
    reach = math.ceil(TPR_LEVEL * n_pos)
    while reach > 0 and (reach - 1) / n_pos >= TPR_LEVEL:
        reach -= 1
    while reach / n_pos < TPR_LEVEL:
        reach += 1
    return reach, reach if reach / n_pos == TPR_LEVEL else reach - 1


def _level_points(points: OperatingPoints) -> tuple[int, int]:
    """How many operating points (high to low threshold) have TPR < 0.95, and how many have
    TPR <= 0.95; found on the integer ``tp`` (no TPR array)."""
    reach, at_most = _tpr_levels(points.n_pos)
    return (int(np.searchsorted(points.tp, reach)),
            int(np.searchsorted(points.tp, at_most, side="right")))


def _first_at_level(points: OperatingPoints) -> int:
    """Index of the first operating point (high to low threshold) with TPR >= 0.95."""
    return _level_points(points)[0]


def fpr_at_95(points: OperatingPoints, fpr_at: str) -> tuple[float, float]:
    """FPR at 95 % TPR and the threshold of the operating point it was read at.

    * ``first``: the first operating point, thresholds high to low, with TPR >= 0.95.
    * ``closest``: Hendrycks' ``fpr_and_fdr_at_recall``: among the operating points up to the
      first one reaching full recall, the one minimising ``|recall - 0.95|``; ties (equal
      distance, e.g. several thresholds with the same recall) go to the lowest threshold, as its
      reversed ``argmin`` does.
    * ``interpolated``: ``ood_metrics.fpr_at_95_tpr``: ``np.interp(0.95, tpr, fpr)`` over the ROC
      points with the origin prepended (as ``roc_curve`` returns them; its "never reaches 0.95"
      and "always above 0.95" branches cannot trigger on such a curve). Its threshold is that of
      the first point with TPR >= 0.95, as for ``first``.
    """
    index = _first_at_level(points)
    if fpr_at == "first":
        return float(points.fp[index] / points.n_neg), float(points.thresholds[index])
    tpr, fpr = points.tp / points.n_pos, points.fp / points.n_neg
    if fpr_at == "interpolated":
        value = np.interp(TPR_LEVEL, np.r_[points.tp0 / points.n_pos, tpr],
                          np.r_[points.fp0 / points.n_neg, fpr])
    else:  # a window that ends before full recall holds every candidate (see _CrossingWindow)
        full = np.flatnonzero(points.tp == points.n_pos)
        last = int(full[0]) if full.size else points.tp.size - 1
        distance = np.abs(tpr[: last + 1] - TPR_LEVEL)
        index = last - int(np.argmin(distance[::-1]))
        value = fpr[index]
    return float(value), float(points.thresholds[index])


def _ap_gap_terms(pos: np.ndarray, neg: np.ndarray, tp: np.ndarray, fp: np.ndarray) -> float:
    """Sum over positive bins of the largest AP change (x n_pos) any order inside the bin can
    cause.

    With ``a`` true positives and ``c`` predictions before a bin holding ``p`` positives and
    ``n`` negatives, the bin adds ``p (a+p) / (c+p+n)`` to ``n_pos * AP`` when tied (binned). Any
    true order adds at most ``U = p (a+p) / (c+p)`` (all positives first, tied) and at least
    ``L = sum_j (a+j) / (c+n+j)`` (all negatives first), so the gap is ``max(U - B, B - L)``.
    ``B - L = d (sum_j 1/(x+j) - p/(x+p))`` with ``x = c+n``, ``d = x-a``; the sum is bounded by
    the midpoint rule for the convex ``1/(x+t)``: ``log1p(p / (x + 1/2))``. A bin with one
    positive and no negative has ``L = B = U`` (one possible order): it gets no gap.
    In terms of the cumulative counts after the bin, ``a + p = tp``, ``c + p + n = tp + fp`` and
    ``d = fp``. Computed for every bin without selecting (bins without positives give 0).
    """
    p = pos.astype(np.float64)
    total = tp + fp  # c + p + n
    before = total - neg  # c + p
    np.maximum(before, 1, out=before)  # 0 only before the first positive, where p = 0
    np.maximum(total, 1, out=total)  # likewise (leading empty bins)
    upper = p * tp  # U - B = p (a+p) n / ((c+p) (c+p+n))
    upper *= neg
    upper /= before
    upper /= total
    lower = total - p  # B - L <= d max(log1p(p / (x+1/2)) - p/(x+p), 0), x = c + n
    lower += 0.5
    np.divide(p, lower, out=lower)
    np.log1p(lower, out=lower)
    lower -= np.divide(p, total, out=p)
    np.maximum(lower, 0.0, out=lower)
    lower *= fp
    lower *= (pos > 1) | (neg > 0)  # one positive and no negative: L = B = U, no gap
    return np.maximum(upper, lower, out=upper).sum()


def _fpr_bound(points: OperatingPoints, fpr_at: str) -> float:
    """Width (as FPR) of the bin corners between which both the exact and binned point lie.

    Corners (cumulative counts after each bin, origin first) are operating points of both the
    exact and the binned curve; inside a bin the exact curve can take any monotone path.
    Corner ``k`` is the origin (of the window) for ``k = 0``, else the point after bin ``k - 1``.
    """
    def fp(corner: int) -> int:
        return int(points.fp[corner - 1]) if corner else points.fp0

    below, at_most = _level_points(points)
    first = 1 + below  # first corner at the level
    last_below = at_most  # last corner at or below the level
    if fpr_at == "first":
        low, high = fp(first - 1), fp(first)
    elif fpr_at == "interpolated":
        low, high = fp(last_below), fp(last_below + 1)
    else:  # closest: the lowest threshold of the recall level just above may enter the next bin
        low = fp(last_below)
        level = points.tp[first - 1]
        if level < points.n_pos:  # corner after the last point at this level, then one more
            high = fp(int(np.searchsorted(points.tp, level, side="right")) + 1)
        else:
            high = fp(first)
    return float(high - low) / points.n_neg


class _CrossingWindow:
    """The few operating points around the first one reaching TPR 0.95, kept while the points
    stream by: FPR@95 (every convention) and its bound read nothing else.

    Kept: ``BEFORE`` point before it and ``AFTER`` from it on. Compressed points alternate
    between thresholds with positives and single negative-only ones, so a true-positive count is
    shared by at most two consecutive points: the window holds the last point below the level
    (of its count, the lowest threshold: the one "closest" picks on a tie), both points at the
    count reaching it, and the first point of the next count (the last corner the "closest"
    bound reads).
    """

    BEFORE, AFTER = 1, 3

    def __init__(self, reach: int) -> None:
        self.reach = reach
        self.parts: list[tuple[np.ndarray, ...]] = []  # kept points, in order
        self.missing: int | None = None  # points still wanted after the crossing (None: not seen)

    def offer(self, *chunk: np.ndarray) -> None:
        """Look at the next chunk of points: thresholds, pos, neg, tp, fp (cumulative)."""
        if self.missing is None:
            at = int(np.searchsorted(chunk[3], self.reach))
            if at == chunk[3].size:  # not reached yet: keep the last points
                self._keep(chunk, slice(-self.BEFORE, None), slice(-self.BEFORE, None))
                return
            kept = sum(part[0].size for part in self.parts)
            drop = max(kept + at - self.BEFORE, 0)  # points before the BEFORE ones
            self._keep(chunk, slice(None, at + self.AFTER), slice(drop, None))
            self.missing = kept + at - drop + self.AFTER - self.parts[0][0].size
        elif self.missing > 0:
            self.parts.append(tuple(a[:self.missing] for a in chunk))
            self.missing -= self.parts[-1][0].size

    def _keep(self, chunk: tuple[np.ndarray, ...], take: slice, then: slice) -> None:
        """Keep ``then`` of the kept points followed by the ``take`` points of ``chunk``."""
        joined = concat_fields([*self.parts, tuple(a[take] for a in chunk)])
        self.parts = [tuple(a[then] for a in joined)]

    def points(self, n_pos: int, n_neg: int) -> OperatingPoints:
        thresholds, pos, neg, tp, fp = concat_fields(self.parts)
        return OperatingPoints(thresholds, pos, neg, tp, fp, n_pos, n_neg,
                               int(tp[0] - pos[0]), int(fp[0] - neg[0]))


def _merged_runs(blocks: Iterable[ScoreCounts]) -> Iterator[ScoreCounts]:
    """:func:`compress` over a stream of counts: ``blocks`` come from the highest thresholds to
    the lowest, each ascending inside. A negative-only threshold at the bottom of a block is
    held back, as the next block's top may continue its run."""
    held: tuple | None = None  # threshold, pos (0) and neg of the held-back piece
    for block in blocks:
        if held is not None:
            block = ScoreCounts(*(np.append(a, value) for a, value in
                                  zip((block.thresholds, block.pos, block.neg), held, strict=True)))
        if not block.thresholds.size:
            continue
        block = compress(block)
        held = None
        if block.pos[0] == 0:
            held = (block.thresholds[0], 0, block.neg[0])
            block = ScoreCounts(block.thresholds[1:], block.pos[1:], block.neg[1:])
        if block.thresholds.size:
            yield block
    if held is not None:
        yield ScoreCounts(*(np.array([value]) for value in held))


def _descending_chunks(blocks: Iterable[ScoreCounts], size: int
                       ) -> Iterator[tuple[np.ndarray, ...]]:
    """The merged points, thresholds descending, in chunks of ``size`` (the last may be
    shorter): thresholds, pos and neg (int64) of each."""
    pending: list[tuple[np.ndarray, ...]] = []
    count = 0
    for block in _merged_runs(blocks):
        pending.append((block.thresholds[::-1], block.pos[::-1].astype(np.int64, copy=False),
                        block.neg[::-1].astype(np.int64, copy=False)))
        count += block.thresholds.size
        if count >= size:
            joined = pending[0] if len(pending) == 1 else concat_fields(pending)
            whole = count - count % size
            for start in range(0, whole, size):
                yield tuple(a[start:start + size] for a in joined)
            pending, count = [tuple(a[whole:] for a in joined)], count - whole
    if count:
        yield concat_fields(pending)


def summarize_blocks(blocks: Iterable[ScoreCounts], n_pos: int, n_neg: int, fpr_at: str, *,
                     binned: bool | None = None) -> dict:
    """:func:`summarize` of counts that arrive in ``blocks`` (highest thresholds first, each
    ascending inside) holding ``n_pos`` positives and ``n_neg`` negatives in all.

    AUROC is the trapezoid area with ties counted half (= ``roc_auc_score``), AP the step sum of
    precision over recall increments (= ``average_precision_score``), FPR@95 per
    :func:`fpr_at_95`. One pass over fixed chunks of the points (so the float sums do not depend
    on the blocks); nothing of the size of the curve is held: the sums carry the cumulative
    counts from chunk to chunk and FPR@95 reads a window of points around its level.
    """
    check_fpr_at(fpr_at)
    _check_pool(n_pos, n_neg)
    window = _CrossingWindow(_tpr_levels(n_pos)[0])
    area = precision = pairs = gaps = 0
    tp_before = fp_before = 0
    for thresholds, pos, neg in _descending_chunks(blocks, _BLOCK):
        tp, fp = np.cumsum(pos), np.cumsum(neg)
        tp += tp_before
        fp += fp_before
        area += _auroc_terms(pos, neg, tp)
        precision += _ap_terms(pos, tp, fp)
        if binned:
            pairs += _pair_terms(pos, neg)
            gaps += _ap_gap_terms(pos, neg, tp, fp)
        window.offer(thresholds, pos, neg, tp, fp)
        tp_before, fp_before = int(tp[-1]), int(fp[-1])
    if (tp_before, fp_before) != (n_pos, n_neg):
        raise OodBenchError(f"counts hold {tp_before} positives and {fp_before} negatives, "
                            f"expected {n_pos} and {n_neg}")
    points = window.points(n_pos, n_neg)
    fpr95, threshold = fpr_at_95(points, fpr_at)
    result = {
        "auroc": float(area) / (n_pos * n_neg),
        "ap": float(precision) / n_pos,
        "fpr95": fpr95,
        "threshold_at_95": threshold,
        "n_pos": n_pos,
        "n_neg": n_neg,
    }
    if binned is not None:
        bounds = {"auroc": 0.5 * float(pairs) / (n_pos * n_neg), "ap": float(gaps) / n_pos,
                  "fpr95": _fpr_bound(points, fpr_at) if binned else 0.0}
        result["error_bound"] = {name: value + _ROUNDING_SLACK if value > 0 else 0.0
                                 for name, value in bounds.items()}
    return result


def summarize(counts: ScoreCounts, fpr_at: str, *, binned: bool | None = None) -> dict:
    """AUROC, AP, FPR@95 (+ threshold, pixel counts) of ``counts``.

    With ``binned`` set, also ``error_bound``: certified bounds on |binned - exact| per metric
    when True (every threshold stands for a bin of scores), zeros when False (exact counts).
    """
    return summarize_blocks([counts], int(counts.pos.sum()), int(counts.neg.sum()), fpr_at,
                            binned=binned)


def curves(counts: ScoreCounts) -> dict[str, dict[str, np.ndarray]]:
    """ROC and PR curves for plotting, thresholds descending (negative-only runs merged).

    ``roc``: ``fpr``, ``tpr``, ``thresholds`` starting at the origin (threshold ``+inf``), like
    ``sklearn.metrics.roc_curve``. ``pr``: ``precision``, ``recall``, ``thresholds`` at every
    operating point (no artificial end point). Predicting ``score >= threshold``.
    """
    points = operating_points(compress(counts))
    tpr = points.tp / points.n_pos
    return {
        "roc": {
            "fpr": np.r_[0.0, points.fp / points.n_neg],
            "tpr": np.r_[0.0, tpr],
            "thresholds": np.r_[np.inf, points.thresholds],
        },
        "pr": {
            "precision": points.tp / (points.tp + points.fp),
            "recall": tpr,
            "thresholds": points.thresholds.copy(),
        },
    }
