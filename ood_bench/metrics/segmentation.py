"""Closed-set semantic segmentation metrics from a streaming confusion matrix.

Rows of the confusion matrix are ground-truth classes, columns predicted classes (the
scikit-learn convention). Pixels whose target is ``ignore_index`` are dropped whatever their
prediction, so masked predictions may carry any value there. Every other prediction must be a
class id in ``[0, num_classes)``: a value outside that range is an error, never silently counted
as a miss.

Definitions (all over the pooled pixels of every update):

* ``iou[c]`` = TP / (TP + FP + FN); NaN for a class absent from both ground truth and prediction.
* ``acc[c]`` = TP / (TP + FN), the per-class recall; NaN for a class absent from the ground truth.
* ``miou`` = mean of ``iou`` over classes present in ground truth or prediction.
* ``macc`` = mean of ``acc`` over classes present in the ground truth.
* ``pixel_acc`` = correctly classified pixels / evaluated pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import OodBenchError
from ._inputs import check_same_shape, describe_values, require_integer, to_numpy


class SegmentationMetric:
    """Streaming, mergeable confusion matrix with mIoU / mAcc / pixel accuracy.

    Call :meth:`update` once per batch, :meth:`merge` to combine states of several workers and
    :meth:`compute` at the end; the state is one ``num_classes x num_classes`` int64 matrix.
    """

    def __init__(self, num_classes: int = 19, ignore_index: int | None = 255) -> None:
        if int(num_classes) < 1:
            raise OodBenchError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.confusion_matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        """Forget every update."""
        self.confusion_matrix[:] = 0

    def update(self, pred: Any, target: Any) -> None:
        """Add a batch of class-id predictions and targets (same shape, numpy or torch)."""
        pred = to_numpy(pred, "pred")
        target = to_numpy(target, "target")
        check_same_shape(pred, target, ("pred", "target"), None)
        require_integer(pred, "pred")
        require_integer(target, "target")
        pred, target = pred.ravel(), target.ravel()
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            if not keep.all():
                pred, target = pred[keep], target[keep]
        self._check_range(target, "target", f"or ignore_index {self.ignore_index}")
        self._check_range(pred, "pred", "at pixels whose target is not ignore_index")
        k = self.num_classes
        pairs = target.astype(np.int64) * k + pred.astype(np.int64)
        self.confusion_matrix += np.bincount(pairs, minlength=k * k).reshape(k, k)

    def _check_range(self, values: np.ndarray, name: str, hint: str) -> None:
        if values.size and (values.min() < 0 or values.max() >= self.num_classes):
            bad = values[(values < 0) | (values >= self.num_classes)]
            raise OodBenchError(
                f"{name} has values outside [0, {self.num_classes}) {hint}: {describe_values(bad)}"
            )

    def merge(self, other: SegmentationMetric) -> SegmentationMetric:
        """Add the counts of ``other`` (e.g. another process's state) here; return self."""
        if not isinstance(other, SegmentationMetric):
            raise TypeError(f"cannot merge SegmentationMetric with {type(other).__name__}")
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise OodBenchError(
                "cannot merge SegmentationMetric states with different settings: "
                f"num_classes/ignore_index {self.num_classes}/{self.ignore_index} vs "
                f"{other.num_classes}/{other.ignore_index}"
            )
        self.confusion_matrix += other.confusion_matrix
        return self

    def compute(self) -> dict[str, Any]:
        """Metrics of everything seen so far (see the module docstring for definitions)."""
        cm = self.confusion_matrix
        total = int(cm.sum())
        if total == 0:
            raise OodBenchError("SegmentationMetric has no evaluated pixel (every target ignored?)")
        tp = np.diag(cm).astype(np.float64)
        gt = cm.sum(axis=1).astype(np.float64)
        union = gt + cm.sum(axis=0) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(gt > 0, tp / gt, np.nan)
        return {
            "miou": float(np.nanmean(iou)),
            "macc": float(np.nanmean(acc)),
            "pixel_acc": float(tp.sum() / total),
            "iou": iou,
            "acc": acc,
            "confusion_matrix": cm.copy(),
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain, picklable state (settings plus counts) for checkpoints or all-reduce."""
        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "confusion_matrix": self.confusion_matrix.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state written by :meth:`state_dict` (settings must match)."""
        settings = (state.get("num_classes"), state.get("ignore_index"))
        if settings != (self.num_classes, self.ignore_index):
            raise OodBenchError(
                f"state has num_classes/ignore_index {settings[0]}/{settings[1]}, "
                f"this metric {self.num_classes}/{self.ignore_index}"
            )
        cm = np.asarray(state["confusion_matrix"])
        if cm.shape != self.confusion_matrix.shape or (cm < 0).any():
            raise OodBenchError(
                f"state confusion_matrix must be a non-negative {self.confusion_matrix.shape} "
                f"array, got shape {cm.shape}"
            )
        self.confusion_matrix = cm.astype(np.int64, copy=True)


def segmentation_metrics(
    pred: Any, target: Any, num_classes: int = 19, ignore_index: int | None = 255
) -> dict[str, Any]:
    """One-shot twin of :class:`SegmentationMetric`: ``update(pred, target)`` then ``compute()``."""
    metric = SegmentationMetric(num_classes, ignore_index)
    metric.update(pred, target)
    return metric.compute()
