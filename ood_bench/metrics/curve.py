"""Curve arithmetic of metric spec v1, shared by every pixel OOD metric path.

Exact and binned metrics both reduce the pooled pixels to :class:`ScoreCounts`: distinct
thresholds (ascending) with the number of positive (OOD) and negative (in-distribution) pixels
at each. Everything else -- AUROC, AP, the three FPR@95 conventions, plotting curves and the
certified error bounds of binned counts -- is computed here from those counts, once.

For binned counts each threshold stands for a bin of scores whose internal order is unknown;
:func:`error_bounds` bounds how far each metric can be from its value on the exact scores.
"""

from __future__ import annotations

import math
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
    """Cumulative counts when predicting ``score >= threshold``, thresholds descending."""

    thresholds: np.ndarray
    pos: np.ndarray  # positives at each threshold
    neg: np.ndarray
    tp: np.ndarray  # cumulative true positives (int64)
    fp: np.ndarray  # cumulative false positives (int64)

    @property
    def n_pos(self) -> int:
        return int(self.tp[-1]) if self.tp.size else 0

    @property
    def n_neg(self) -> int:
        return int(self.fp[-1]) if self.fp.size else 0


def operating_points(counts: ScoreCounts) -> OperatingPoints:
    """Scan the thresholds from high to low; raise if the pool lacks a class."""
    pos = counts.pos[::-1].astype(np.int64, copy=False)  # reversed views: no copies
    neg = counts.neg[::-1].astype(np.int64, copy=False)
    points = OperatingPoints(counts.thresholds[::-1], pos, neg, np.cumsum(pos), np.cumsum(neg))
    if points.n_pos == 0 or points.n_neg == 0:
        missing = "positive (OOD, label 1)" if points.n_pos == 0 else "negative (label 0)"
        raise OodBenchError(
            f"the pooled pixels contain no {missing} pixel ({points.n_pos} positive, "
            f"{points.n_neg} negative): AUROC, AP and FPR@95 are undefined"
        )
    return points


def check_fpr_at(fpr_at: str) -> str:
    """Validate an FPR@95 convention name."""
    if fpr_at not in FPR_CONVENTIONS:
        raise OodBenchError(f"unknown fpr_at {fpr_at!r}; expected one of {FPR_CONVENTIONS}")
    return fpr_at


#: Thresholds per block of the summations: the temporaries of a block stay in the CPU cache (whole
#: arrays of a large pool would each be a fresh, uncached allocation).
_BLOCK = 1 << 15


def _blockwise(terms, *arrays: np.ndarray) -> float:
    """Float64 sum of ``terms(*block_slices)`` over blocks of the equally long ``arrays``."""
    size = arrays[0].size
    return float(sum(terms(*(array[start:start + _BLOCK] for array in arrays))
                     for start in range(0, size, _BLOCK)))


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


def auroc(points: OperatingPoints) -> float:
    """Trapezoid area under the ROC curve, ties counted half (= ``roc_auc_score``)."""
    area = _blockwise(_auroc_terms, points.pos, points.neg, points.tp)
    return area / (points.n_pos * points.n_neg)


def average_precision(points: OperatingPoints) -> float:
    """Step sum of precision over recall increments (= ``average_precision_score``)."""
    return _blockwise(_ap_terms, points.pos, points.tp, points.fp) / points.n_pos


def _level_points(points: OperatingPoints) -> tuple[int, int]:
    """How many operating points (high to low threshold) have TPR < 0.95, and how many have
    TPR <= 0.95 (TPR as the float64 ``tp / n_pos`` is non-decreasing).

    Found on the integer ``tp`` (no TPR array): ``reach`` is the smallest true-positive count
    whose TPR reaches the level; the float division is monotone in ``tp``.
    """
    n_pos = points.n_pos
    reach = math.ceil(TPR_LEVEL * n_pos)
    while reach > 0 and (reach - 1) / n_pos >= TPR_LEVEL:
        reach -= 1
    while reach / n_pos < TPR_LEVEL:
        reach += 1
    at_most = reach if reach / n_pos == TPR_LEVEL else reach - 1  # largest count with TPR <= level
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
        value = np.interp(TPR_LEVEL, np.r_[0.0, tpr], np.r_[0.0, fpr])
    else:
        last = int(np.argmax(points.tp == points.n_pos))
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
    Corner ``k`` is the origin for ``k = 0``, else the point after bin ``k - 1``.
    """
    def fp(corner: int) -> int:
        return int(points.fp[corner - 1]) if corner else 0

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


def error_bounds(points: OperatingPoints, fpr_at: str) -> dict[str, float]:
    """Certified bounds on |binned - exact| for each metric when every threshold is a bin."""
    bounds = {
        "auroc": 0.5 * _blockwise(_pair_terms, points.pos, points.neg)
        / (points.n_pos * points.n_neg),
        "ap": _blockwise(_ap_gap_terms, points.pos, points.neg, points.tp, points.fp)
        / points.n_pos,
        "fpr95": _fpr_bound(points, fpr_at),
    }
    return {name: value + _ROUNDING_SLACK if value > 0 else 0.0 for name, value in bounds.items()}


def summarize(counts: ScoreCounts, fpr_at: str, *, binned: bool | None = None) -> dict:
    """AUROC, AP, FPR@95 (+ threshold, pixel counts) of ``counts``.

    With ``binned`` set, also ``error_bound``: the certified bounds of :func:`error_bounds` when
    True, zeros when False (the counts are exact).
    """
    check_fpr_at(fpr_at)
    points = operating_points(compress(counts))
    fpr95, threshold = fpr_at_95(points, fpr_at)
    result = {
        "auroc": auroc(points),
        "ap": average_precision(points),
        "fpr95": fpr95,
        "threshold_at_95": threshold,
        "n_pos": points.n_pos,
        "n_neg": points.n_neg,
    }
    if binned is not None:
        zero = dict.fromkeys(("auroc", "ap", "fpr95"), 0.0)
        result["error_bound"] = error_bounds(points, fpr_at) if binned else zero
    return result


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
