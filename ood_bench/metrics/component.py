"""SegmentMeIfYouCan component-level metrics: sIoU, PPV and mean F1 over sIoU thresholds.

Per frame (labels: 0 in-distribution, 1 anomaly, ``ignore_index`` void):

1. binarise the scores, ``score > threshold`` (the SMIYC rule; ``inclusive=True`` uses ``>=``),
   and zero the prediction on void pixels;
2. label connected components with 8-connectivity (3x3 structure) in the ground-truth anomaly
   mask and in the prediction;
3. drop predicted components smaller than ``min_pred_size`` pixels and turn ground-truth
   components smaller than ``min_gt_size`` pixels into void;
4. restrict everything to the region of interest (pixels that are not void).

For a ground-truth component ``k`` with ``P_k`` the predicted components touching it, the
adjusted IoU ignores the parts of those predictions that lie on *other* ground-truth components::

    sIoU(k) = |k ∩ ∪P_k| / (|∪P_k| + |k| - |k ∩ ∪P_k| - |∪P_k ∩ other GT components|)

which simplifies to ``|k ∩ prediction| / (|k| + |∪P_k ∩ background|)``: the pixels of ``k``
covered by any prediction over ``|k|`` plus the background pixels of the touching predictions.
``sIoU`` of a predicted component is the mirror image, and its ``PPV`` is the fraction of its
pixels on ground-truth anomaly.

For each sIoU threshold tau in 0.25, 0.30, ..., 0.75 and summed over frames: TP = ground-truth
components with sIoU >= tau, FN = the others, FP = predicted components with PPV < tau;
F1(tau) = 2 TP / (2 TP + FN + FP) and ``f1_mean`` is the mean over the 11 thresholds.
``siou_gt`` / ``siou_pred`` / ``ppv`` are means over all components of all frames.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import OodBenchError
from ._inputs import check_same_shape, describe_values, frame_suffix, to_numpy

#: sIoU thresholds tau, exactly as the SMIYC toolkit builds them.
SIOU_THRESHOLDS = np.linspace(0.25, 0.75, 11)

#: (min_pred_size, min_gt_size) of the two SMIYC tracks.
TRACKS: dict[str, tuple[int, int]] = {"anomaly": (500, 100), "obstacle": (50, 10)}

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_REPORTED_TAUS = {"25": 0, "50": 5, "75": 10}  # key suffix -> index into SIOU_THRESHOLDS
_SETTINGS = ("threshold", "inclusive", "min_pred_size", "min_gt_size", "ignore_index")


class ComponentMetric:
    """Streaming, mergeable SMIYC component metrics at a fixed score threshold.

    ``track`` picks the SMIYC minimum component sizes (``"anomaly"``: predictions < 500 px
    dropped, ground truth < 100 px voided; ``"obstacle"``: 50 / 10); ``min_pred_size`` and
    ``min_gt_size`` override them. Use :meth:`from_pixel_metric` to take the threshold at the
    pixel-level best-F1 operating point as SMIYC does.
    """

    def __init__(
        self,
        threshold: float,
        *,
        track: str = "anomaly",
        min_pred_size: int | None = None,
        min_gt_size: int | None = None,
        ignore_index: int = 255,
        inclusive: bool = False,
    ) -> None:
        if track not in TRACKS:
            raise OodBenchError(f"unknown track {track!r}; expected one of {sorted(TRACKS)}")
        threshold = float(threshold)
        if np.isnan(threshold):
            raise OodBenchError("threshold must be a number, got NaN")
        default_pred, default_gt = TRACKS[track]
        self.threshold = threshold
        self.inclusive = bool(inclusive)
        self.min_pred_size = int(default_pred if min_pred_size is None else min_pred_size)
        self.min_gt_size = int(default_gt if min_gt_size is None else min_gt_size)
        self.ignore_index = int(ignore_index)
        self.reset()

    @classmethod
    def from_pixel_metric(cls, pixel_metric: Any, **kwargs: Any) -> ComponentMetric:
        """A metric binarising at the best-F1 operating point of a filled ``PixelOODMetric``.

        The prediction is ``score >= t`` with ``t`` from :func:`best_f1_threshold`, i.e. exactly
        the pixels that operating point counts as positive.
        """
        threshold, _ = best_f1_threshold(pixel_metric)
        return cls(threshold, inclusive=True, **kwargs)

    def reset(self) -> None:
        """Forget every update."""
        n = SIOU_THRESHOLDS.size
        self.tp = np.zeros(n, dtype=np.int64)
        self.fn = np.zeros(n, dtype=np.int64)
        self.fp = np.zeros(n, dtype=np.int64)
        self.siou_gt_sum = 0.0
        self.siou_pred_sum = 0.0
        self.ppv_sum = 0.0
        self.n_gt = 0
        self.n_pred = 0
        self.n_frames = 0

    def update(self, scores: Any, labels: Any, frame: str | None = None) -> None:
        """Add one frame ``(H, W)`` or a batch of frames ``(N, H, W)`` (numpy or torch)."""
        scores = to_numpy(scores, "scores")
        labels = to_numpy(labels, "labels")
        check_same_shape(scores, labels, ("scores", "labels"), frame)
        if scores.ndim not in (2, 3):
            raise OodBenchError(
                f"expected (H, W) or (N, H, W) maps{frame_suffix(frame)}, got shape {scores.shape}"
            )
        if scores.ndim == 2:
            scores, labels = scores[None], labels[None]
        for frame_scores, frame_labels in zip(scores, labels, strict=True):
            self._add(*self._frame_components(frame_scores, frame_labels, frame))

    def _frame_components(
        self, scores: np.ndarray, labels: np.ndarray, frame: str | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-component (sIoU of GT components, sIoU and PPV of predicted components)."""
        void = labels == self.ignore_index
        anomaly = labels == 1
        bad = ~(void | anomaly | (labels == 0))
        if bad.any():
            raise OodBenchError(
                f"labels{frame_suffix(frame)} must be 0, 1 or ignore_index {self.ignore_index}; "
                f"found {describe_values(labels[bad])}"
            )
        where = frame_suffix(frame)
        if not np.issubdtype(scores.dtype, np.number) or np.iscomplexobj(scores):
            raise OodBenchError(f"scores{where} must be real numbers, got {scores.dtype}")
        if np.issubdtype(scores.dtype, np.floating) and not np.isfinite(scores[~void]).all():
            raise OodBenchError(f"scores{where} contain NaN or inf outside void pixels")

        predicted = scores >= self.threshold if self.inclusive else scores > self.threshold
        predicted &= ~void
        gt_ids, n_gt = ndimage.label(anomaly, structure=_EIGHT_CONNECTED)
        pred_ids, n_pred = ndimage.label(predicted, structure=_EIGHT_CONNECTED)
        pred_ids = _drop_small(pred_ids, n_pred, self.min_pred_size)
        small_gt = np.bincount(gt_ids.ravel(), minlength=n_gt + 1) < self.min_gt_size
        small_gt[0] = False
        roi = ~void & ~small_gt[gt_ids]

        gt, pred = gt_ids[roi], pred_ids[roi]
        return _adjusted_ious(gt, pred, n_gt, n_pred)

    def _add(self, siou_gt: np.ndarray, siou_pred: np.ndarray, ppv: np.ndarray) -> None:
        taus = SIOU_THRESHOLDS[:, None]
        hits = (siou_gt[None, :] >= taus).sum(axis=1)
        self.tp += hits
        self.fn += siou_gt.size - hits
        self.fp += (ppv[None, :] < taus).sum(axis=1)
        self.siou_gt_sum += float(siou_gt.sum())
        self.siou_pred_sum += float(siou_pred.sum())
        self.ppv_sum += float(ppv.sum())
        self.n_gt += siou_gt.size
        self.n_pred += ppv.size
        self.n_frames += 1

    def merge(self, other: ComponentMetric) -> ComponentMetric:
        """Add the counts and sums of ``other`` (same settings) into this one; return self."""
        if not isinstance(other, ComponentMetric):
            raise TypeError(f"cannot merge ComponentMetric with {type(other).__name__}")
        mine, theirs = self._settings(), other._settings()
        if mine != theirs:
            raise OodBenchError(f"cannot merge ComponentMetric states: settings {mine}, {theirs}")
        self.tp += other.tp
        self.fn += other.fn
        self.fp += other.fp
        for name in ("siou_gt_sum", "siou_pred_sum", "ppv_sum", "n_gt", "n_pred", "n_frames"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def compute(self) -> dict[str, Any]:
        """Dataset-level results (NaN where a mean or F1 has nothing to average)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = 2 * self.tp / (2 * self.tp + self.fn + self.fp)
        result: dict[str, Any] = {
            "siou_gt": self.siou_gt_sum / self.n_gt if self.n_gt else float("nan"),
            "siou_pred": self.siou_pred_sum / self.n_pred if self.n_pred else float("nan"),
            "ppv": self.ppv_sum / self.n_pred if self.n_pred else float("nan"),
            "f1_mean": float(np.mean(f1)),
            "siou_thresholds": SIOU_THRESHOLDS.copy(),
            "f1": f1,
            "tp": self.tp.copy(),
            "fn": self.fn.copy(),
            "fp": self.fp.copy(),
        }
        for suffix, index in _REPORTED_TAUS.items():
            result[f"tp_{suffix}"] = int(self.tp[index])
            result[f"fn_{suffix}"] = int(self.fn[index])
            result[f"fp_{suffix}"] = int(self.fp[index])
            result[f"f1_{suffix}"] = float(f1[index])
        result.update(n_gt=self.n_gt, n_pred=self.n_pred, n_frames=self.n_frames)
        result.update(self._settings())
        return result

    def _settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _SETTINGS}

    def state_dict(self) -> dict[str, Any]:
        """Plain, picklable state: settings, per-threshold counts and per-component sums."""
        state = self._settings()
        state.update(
            tp=self.tp.copy(), fn=self.fn.copy(), fp=self.fp.copy(),
            siou_gt_sum=self.siou_gt_sum, siou_pred_sum=self.siou_pred_sum, ppv_sum=self.ppv_sum,
            n_gt=self.n_gt, n_pred=self.n_pred, n_frames=self.n_frames,
        )  # fmt: skip
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state written by :meth:`state_dict` (settings must match)."""
        theirs = {name: state.get(name) for name in _SETTINGS}
        if theirs != self._settings():
            raise OodBenchError(f"state has settings {theirs}, this metric {self._settings()}")
        for name in ("tp", "fn", "fp"):
            counts = np.asarray(state[name], dtype=np.int64)
            if counts.shape != SIOU_THRESHOLDS.shape:
                raise OodBenchError(f"state {name} must have {SIOU_THRESHOLDS.size} entries")
            setattr(self, name, counts.copy())
        for name in ("siou_gt_sum", "siou_pred_sum", "ppv_sum"):
            setattr(self, name, float(state[name]))
        for name in ("n_gt", "n_pred", "n_frames"):
            setattr(self, name, int(state[name]))


def _drop_small(ids: np.ndarray, n: int, min_size: int) -> np.ndarray:
    """Set components of a label image with fewer than ``min_size`` pixels to 0 (ids kept)."""
    if n == 0 or min_size <= 1:
        return ids
    keep = np.bincount(ids.ravel(), minlength=n + 1) >= min_size
    keep[0] = False
    return np.where(keep[ids], ids, 0)


def _adjusted_ious(
    gt: np.ndarray, pred: np.ndarray, n_gt: int, n_pred: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sIoU of each GT component, sIoU and PPV of each predicted one, from ROI pixel ids.

    Works on the sparse contingency of (GT id, prediction id) pairs: only components present in
    the ROI are reported, and a pair table is never materialised densely.
    """
    labelled = (gt > 0) | (pred > 0)  # pixels in neither kind of component never matter
    gt, pred = gt[labelled], pred[labelled]
    gt_size = np.bincount(gt, minlength=n_gt + 1)
    pred_size = np.bincount(pred, minlength=n_pred + 1)
    gt_uncovered = np.bincount(gt[pred == 0], minlength=n_gt + 1)  # |k| minus predicted pixels
    pred_on_bg = np.bincount(pred[gt == 0], minlength=n_pred + 1)  # pixels of p off any GT
    both = (gt > 0) & (pred > 0)
    pairs = np.unique(gt[both].astype(np.int64) * (n_pred + 1) + pred[both])
    pair_gt, pair_pred = np.divmod(pairs, n_pred + 1)
    gt_union = gt_size + np.bincount(pair_gt, weights=pred_on_bg[pair_pred], minlength=n_gt + 1)
    pred_union = pred_size + np.bincount(
        pair_pred, weights=gt_uncovered[pair_gt], minlength=n_pred + 1
    )
    gt_present = np.flatnonzero(gt_size[1:]) + 1
    pred_present = np.flatnonzero(pred_size[1:]) + 1
    pred_hit = pred_size[pred_present] - pred_on_bg[pred_present]
    siou_gt = (gt_size[gt_present] - gt_uncovered[gt_present]) / gt_union[gt_present]
    siou_pred = pred_hit / pred_union[pred_present]
    ppv = pred_hit / pred_size[pred_present]
    return siou_gt, siou_pred, ppv


def best_f1_threshold(pixel_metric: Any) -> tuple[float, float]:
    """Threshold and value of the pixel-level best F1 = max 2TP / (2TP + FP + FN).

    ``pixel_metric`` is a filled ``PixelOODMetric``; the maximum is taken over the operating
    points of its pooled precision-recall curve, and the threshold ``t`` follows that curve's
    convention (pixels with ``score >= t`` are predicted anomalous). Ties go to the highest
    threshold. Merged negative-only threshold runs cannot hide the maximum: inside such a run
    TP is constant and FP grows.
    """
    pr = pixel_metric.curves()["pr"]
    precision, recall = pr["precision"], pr["recall"]
    with np.errstate(invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1))
    return float(pr["thresholds"][best]), float(f1[best])
