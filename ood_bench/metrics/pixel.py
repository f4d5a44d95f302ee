"""Pixel-level OOD metrics, metric spec v1: AUROC, AP and FPR@95 over the global pixel pool.

* :func:`pixel_ood_metrics` -- one call on all pixels (exact by default).
* :class:`PixelOODMetric` -- streaming, mergeable state (``update``/``merge``/``compute``), exact
  or binned with bounded memory and a certified error bound.

Higher score = more anomalous. Label 1 = OOD (positive), 0 = in-distribution, ``ignore_index``
pixels are dropped; any other label is an error. Definitions (all equal to scikit-learn on the
same pixels): AUROC = ``roc_auc_score`` (trapezoid, ties half); AP = ``average_precision_score``
(step sum); FPR@95 per ``fpr_at`` -- see :func:`ood_bench.metrics.curve.fpr_at_95`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..errors import OodBenchError
from ._inputs import check_same_shape, describe_values, frame_suffix, to_numpy
from .curve import ScoreCounts, check_fpr_at, summarize, summarize_blocks
from .curve import curves as _curves
from .histogram import BinnedCounts, ExactCounts, exact_counts
from .spec import METRIC_SPEC_VERSION

__all__ = ["METRIC_SPEC_VERSION", "PixelOODMetric", "BoundToleranceWarning", "pixel_ood_metrics"]

#: Pixels per internal chunk of the binned functional path (bounds temporary memory).
_CHUNK = 1 << 22


class BoundToleranceWarning(UserWarning):
    """A binned metric's certified error bound exceeds the requested tolerance."""


def _scores_array(scores: Any) -> np.ndarray:
    if getattr(scores, "dtype", None) is not None and str(scores.dtype) == "torch.bfloat16":
        scores = scores.float()  # numpy has no bfloat16; float32 holds it exactly
    return to_numpy(scores, "scores")


def _prepare(scores: Any, labels: Any, ignore_index: int, frame: Any) -> tuple[np.ndarray, ...]:
    """Validate one frame; return its non-ignored scores (1-D float) and positive mask."""
    where = frame_suffix(None if frame is None else str(frame))
    scores = _scores_array(scores)
    labels = to_numpy(labels, "labels")
    check_same_shape(scores, labels, ("scores", "labels"), None if frame is None else str(frame))
    if scores.dtype.kind not in "biuf":
        raise OodBenchError(f"scores{where} must be real numbers, got dtype {scores.dtype}")
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)
    elif scores.dtype == np.float16:
        scores = scores.astype(np.float32)  # exact; sorts and keys faster
    if labels.dtype.kind not in "biuf":
        raise OodBenchError(f"labels{where} must be integers, got dtype {labels.dtype}")
    scores, labels = scores.reshape(-1), labels.reshape(-1)
    binary = labels.dtype.kind in "bu" and (labels.size == 0 or labels.max() <= 1)
    if not binary or ignore_index in (0, 1):  # one cheap pass decides the common case
        scores, labels = _drop_ignored(scores, labels, ignore_index, where)
    with np.errstate(over="ignore", invalid="ignore"):  # a finite sum proves finite scores
        finite = np.isfinite(scores.sum()) or np.isfinite(scores).all()
    if not finite:
        n_nan = int(np.isnan(scores).sum())
        n_inf = int(np.isinf(scores).sum())
        raise OodBenchError(
            f"scores{where} contain {n_nan} NaN and {n_inf} infinite values on evaluated "
            "pixels; every pixel that is not ignore_index needs a finite score"
        )
    if binary and labels.itemsize == 1:  # 0/1 bytes are valid booleans: no new array
        return scores, labels.view(np.bool_)
    return scores, labels == 1


def _drop_ignored(scores: np.ndarray, labels: np.ndarray, ignore_index: int | None,
                  where: str) -> tuple[np.ndarray, np.ndarray]:
    """Check that labels are 0, 1 or ``ignore_index`` and drop the ignored pixels."""
    if labels.dtype.kind in "bu":
        bad = labels > 1
    else:
        bad = (labels != 0) & (labels != 1)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bad.any():
        raise OodBenchError(
            f"labels{where} contain values {describe_values(labels[bad])}; expected 0 "
            f"(in-distribution), 1 (OOD) or ignore_index={ignore_index}"
        )
    if ignore_index is not None:
        keep = labels != ignore_index
        if not keep.all():
            scores, labels = scores[keep], labels[keep]
    return scores, labels


def pixel_ood_metrics(
    scores: Any,
    labels: Any,
    *,
    ignore_index: int = 255,
    fpr_at: str = "first",
    exact: bool = True,
) -> dict:
    """AUROC, AP and FPR@95 of one pool of pixels (arrays or tensors of any equal shape).

    Returns ``auroc``, ``ap``, ``fpr95`` (fractions), ``threshold_at_95`` (score threshold of
    the operating point FPR@95 was read at; predictions are ``score >= threshold``), ``n_pos``,
    ``n_neg``; with ``exact=False`` the binned :class:`PixelOODMetric` is used and
    ``error_bound`` (certified, per metric) is added. Raises ``ValueError`` on bad input.
    """
    check_fpr_at(fpr_at)
    if not exact:
        metric = PixelOODMetric(exact=False, ignore_index=ignore_index, fpr_at=fpr_at)
        scores, labels = _scores_array(scores), to_numpy(labels, "labels")
        check_same_shape(scores, labels, ("scores", "labels"), None)
        flat_scores, flat_labels = scores.reshape(-1), labels.reshape(-1)
        for start in range(0, max(flat_scores.size, 1), _CHUNK):
            metric.update(flat_scores[start:start + _CHUNK], flat_labels[start:start + _CHUNK])
        return metric.compute()
    values, positive = _prepare(scores, labels, ignore_index, None)
    return summarize(exact_counts(values, positive), fpr_at)


class PixelOODMetric:
    """Streaming pixel AUROC / AP / FPR@95 over all pixels of all updates (the global pool).

    ``exact=True`` keeps the count of every distinct score: results equal scikit-learn, but the
    state grows with the number of distinct scores (~24 bytes each; up to one per pixel for
    continuous scores). ``exact=False`` (default) keeps a binned histogram of at most
    ``max_state_bytes`` whatever the number of pixels: bins are keyed on the float32 bit pattern
    (unbounded scores such as energies need no range), allocated only where scores occur and
    coarsened only when the budget requires it. Float64 scores are binned at float32 precision.
    ``compute()`` then adds ``error_bound``, a certified bound on ``|binned - exact|`` per metric
    on the same pixels (zeros when no bin merged distinct scores); when a bound exceeds
    ``tolerance`` a :class:`BoundToleranceWarning` says so (raise ``max_state_bytes`` or use
    ``exact=True``).
    """

    def __init__(
        self,
        exact: bool = False,
        *,
        ignore_index: int = 255,
        fpr_at: str = "first",
        max_state_bytes: int = 64 * 2**20,
        tolerance: float | None = None,
    ) -> None:
        self.exact = bool(exact)
        self.ignore_index = ignore_index
        self.fpr_at = check_fpr_at(fpr_at)
        self.max_state_bytes = int(max_state_bytes)
        self.tolerance = tolerance
        self.reset()

    def reset(self) -> None:
        """Forget every update."""
        self._counts = ExactCounts() if self.exact else BinnedCounts(self.max_state_bytes)

    def update(self, scores: Any, labels: Any, frame: Any = None) -> None:
        """Add one frame (or batch) of scores and labels; ``frame`` names it in errors."""
        values, positive = _prepare(scores, labels, self.ignore_index, frame)
        self._counts.add_scores(values, positive)

    def merge(self, other: PixelOODMetric) -> PixelOODMetric:
        """Pool ``other``'s pixels into this state (in place) and return ``self``."""
        if not isinstance(other, PixelOODMetric) or other.exact != self.exact:
            raise OodBenchError("merge needs another PixelOODMetric with the same `exact` mode")
        if self.exact:
            self.load_state_dict(other.state_dict(), add=True)
        else:  # page by page: the same result as through the state dict, without listing bins
            self._counts.merge(other._counts)
        return self

    def compute(self) -> dict:
        """Metrics of the pool plus ``error_bound`` (dict per metric; zeros when exact)."""
        result = summarize_blocks(self._counts.blocks(), *self.pool_sizes(), self.fpr_at,
                                  binned=not self._counts.lossless)
        loose = {k: v for k, v in result["error_bound"].items()
                 if self.tolerance is not None and v > self.tolerance}
        if loose:
            warnings.warn(
                f"certified error bounds {loose} exceed tolerance={self.tolerance}; raise "
                f"max_state_bytes (now {self.max_state_bytes}) or use exact=True",
                BoundToleranceWarning,
                stacklevel=2,
            )
        return result

    def curves(self) -> dict[str, dict[str, np.ndarray]]:
        """ROC (``fpr``, ``tpr``, ``thresholds``) and PR (``precision``, ``recall``,
        ``thresholds``) arrays, thresholds descending; see :func:`ood_bench.metrics.curve.curves`.
        """
        return _curves(self._counts.counts())

    def pool_sizes(self) -> tuple[int, int]:
        """``(n_pos, n_neg)`` of the pool so far, without computing the metrics."""
        total, positives = self._counts.pixel_totals()
        return positives, total - positives

    @property
    def state_bytes(self) -> int:
        """Current size of the counting state in bytes."""
        return self._counts.nbytes

    def state_dict(self) -> dict[str, Any]:
        """The state as plain ints and numpy arrays (HDF5-friendly, gather-and-merge-able).

        Exact: ``values`` (float64 distinct scores), ``pos``, ``neg``. Binned: ``keys`` (uint32
        float32 key where each bin starts), ``shifts`` (bin width ``2**shift`` keys), ``pos``,
        ``neg``, ``rounded`` (1 if float64 scores were rounded to float32).
        """
        state: dict[str, Any] = {"spec_version": int(METRIC_SPEC_VERSION), "exact": int(self.exact)}
        if self.exact:
            counts = self._counts.counts()
            state.update(values=counts.thresholds.copy(), pos=counts.pos.copy(),
                         neg=counts.neg.copy())
        else:
            keys, shifts, total, pos = self._counts.bins()
            state.update(keys=keys, shifts=shifts, pos=pos, neg=total - pos,
                         rounded=int(self._counts.rounded))
        return state

    def load_state_dict(self, state: dict[str, Any], *, add: bool = False) -> PixelOODMetric:
        """Restore a :meth:`state_dict` (or, with ``add=True``, pool it into this state)."""
        arrays = {key: to_numpy(value, key) for key, value in state.items()}
        if int(arrays["exact"]) != int(self.exact):
            raise OodBenchError("state_dict was saved with a different `exact` mode")
        if str(int(arrays["spec_version"])) != METRIC_SPEC_VERSION:
            raise OodBenchError(f"state_dict has metric spec v{int(arrays['spec_version'])}, "
                                f"this is v{METRIC_SPEC_VERSION}")
        if not add:
            self.reset()
        pos = arrays["pos"].astype(np.int64)
        neg = arrays["neg"].astype(np.int64)
        if self.exact:
            self._counts.add_counts(ScoreCounts(arrays["values"], pos, neg))
        else:
            self._counts.rounded = self._counts.rounded or bool(arrays["rounded"])
            self._counts.add_bins(arrays["keys"], arrays["shifts"], pos + neg, pos)
        return self
