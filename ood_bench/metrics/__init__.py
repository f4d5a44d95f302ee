"""Metric engine: pixel OOD metrics, segmentation metrics and SMIYC component metrics.

Every metric has a streaming state (``update``/``merge``/``compute``/``state_dict``) and a
functional twin; definitions are "metric spec v1" (see the README).
"""

from .component import SIOU_THRESHOLDS, ComponentMetric, best_f1_threshold
from .pixel import BoundToleranceWarning, PixelOODMetric, pixel_ood_metrics
from .segmentation import SegmentationMetric, segmentation_metrics
from .spec import FPR_CONVENTIONS, METRIC_SPEC_VERSION

__all__ = [
    "FPR_CONVENTIONS",
    "METRIC_SPEC_VERSION",
    "SIOU_THRESHOLDS",
    "BoundToleranceWarning",
    "ComponentMetric",
    "PixelOODMetric",
    "SegmentationMetric",
    "best_f1_threshold",
    "pixel_ood_metrics",
    "segmentation_metrics",
]
