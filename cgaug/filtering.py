"""Automatic filtering of generated images (the reference's ``auto_filtering``, with a cap).

1. Object mask: SAM (transformers ``SamModel``), prompted with the bounding box of the pasted
   mask, single-mask output; accepted when IoU(SAM mask, pasted mask) > ``iou_threshold``
   (0.7). The SAM mask becomes the OOD label. With ``mask_source="exact"`` (the synthetic
   generator, whose renderer draws the object exactly where it was pasted) the pasted mask is
   the label and the IoU is 1.
2. Anomaly check: a method of our zoo scores the generated image with a segmentation model; the
   mean score inside the object mask must exceed the ``quantile`` of the scores of the other
   labelled pixels, i.e. the object must look anomalous to a detector. (The reference's
   absolute threshold −3.02 belongs to a Mask2Anomaly detector whose code is missing from its
   release, so its score scale cannot be reproduced.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ood_bench.errors import DataNotFoundError, OodBenchError


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of a non-empty mask, inclusive pixel corners."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise OodBenchError("cannot take the bounding box of an empty mask")
    return int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


class SamMasker:
    """SAM from a local folder (or a cached repo id) holding ``SamModel`` + ``SamProcessor``."""

    def __init__(self, path: str | Path, device: str | None = None) -> None:
        import torch
        from transformers import SamModel, SamProcessor

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.model = SamModel.from_pretrained(str(path), local_files_only=True)
            self.processor = SamProcessor.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as error:
            raise DataNotFoundError(f"cannot load SAM from {str(path)!r} offline ({error}); "
                                    "pass a local folder such as facebook/sam-vit-huge "
                                    "saved with save_pretrained") from None
        self.model.to(self.device).eval()

    def __call__(self, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """The single SAM mask (H×W bool) for the ``box`` prompt."""
        import torch

        inputs = self.processor(images=image, input_boxes=[[list(map(float, box))]],
                                return_tensors="pt")
        with torch.inference_mode():
            output = self.model(pixel_values=inputs["pixel_values"].to(self.device),
                                input_boxes=inputs["input_boxes"].to(self.device),
                                multimask_output=False)
        masks = self.processor.image_processor.post_process_masks(
            output.pred_masks.cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"])
        return masks[0][0, 0].numpy().astype(bool)


class AnomalyCheck:
    """Mean anomaly score inside the object vs a quantile of the scores elsewhere."""

    def __init__(self, model: Any, method: Any, quantile: float = 0.5) -> None:
        if not 0 <= quantile <= 1:
            raise OodBenchError(f"quantile must be in [0, 1], got {quantile!r}")
        self.model, self.method, self.quantile = model, method, quantile

    def __call__(self, image: np.ndarray, mask: np.ndarray, label: np.ndarray
                 ) -> tuple[bool, float, float]:
        """(passed, mean score inside ``mask``, reference quantile) for one image; the
        reference pixels are those labelled in ``label`` (not void) outside the mask."""
        from ood_bench.models import normalize_images

        device = next(self.model.parameters()).device
        scores = self.method.score(self.model, normalize_images(image[None], device))
        scores = scores.scores[0].cpu().numpy()
        others = scores[~mask & (label < 19)]
        if not mask.any() or others.size == 0:
            return False, float("nan"), float("nan")
        inside = float(scores[mask].mean())
        reference = float(np.quantile(others, self.quantile))
        return inside > reference, inside, reference


@dataclass
class FilterResult:
    """Whether the image passed, the OOD mask to label, and the scores to record."""

    accepted: bool
    ood_mask: np.ndarray
    iou: float
    anomaly_score: float | None = None
    anomaly_reference: float | None = None

    def scores(self) -> dict[str, float | None]:
        return {"iou": round(self.iou, 4),
                "anomaly_score": _rounded(self.anomaly_score),
                "anomaly_reference": _rounded(self.anomaly_reference)}


def _rounded(value: float | None) -> float | None:
    return None if value is None or np.isnan(value) else round(value, 4)


class AutoFilter:
    """SAM (or exact) mask + IoU test, then the optional anomaly check."""

    def __init__(self, sam: SamMasker | None = None, anomaly: AnomalyCheck | None = None,
                 iou_threshold: float = 0.7) -> None:
        self.sam, self.anomaly, self.iou_threshold = sam, anomaly, iou_threshold

    @property
    def mask_source(self) -> str:
        return "sam" if self.sam is not None else "exact"

    def __call__(self, image: np.ndarray, pasted_mask: np.ndarray, label: np.ndarray
                 ) -> FilterResult:
        if self.sam is None:
            ood_mask, iou = pasted_mask, 1.0
        else:
            ood_mask = self.sam(image, box_of(pasted_mask))
            iou = mask_iou(ood_mask, pasted_mask)
        result = FilterResult(iou > self.iou_threshold, ood_mask, iou)
        if result.accepted and self.anomaly is not None:
            passed, inside, reference = self.anomaly(image, ood_mask, label)
            result.accepted = passed
            result.anomaly_score, result.anomaly_reference = inside, reference
        return result
