"""Scores and losses of mask-classification (Mask2Former) anomaly methods, as plain functions.

A Mask2Former predicts Q queries, each with 20-way class logits (19 Cityscapes classes +
no-object) and a mask logit map. Their per-pixel class map is

    S_c(x) = Σ_q softmax(class_q)_c · σ(mask_q(x)),   c = 1..19 (no-object dropped),

the model's ``SegOutput.logits`` (:func:`ood_bench.models.mask2former.semantic_scores`). The
methods read S (``research/baselines.md`` §6, §7):

* :func:`mask_msp_score` — Mask2Anomaly's ``1 − max_c S_c(x)``;
* :func:`rba_score` — RbA's ``−Σ_c tanh(S_c(x))``;
* :func:`confident_stuff_mask` — Mask2Anomaly's mask refinement: pixels covered by a
  confidently recognised stuff query (the anomaly score is zeroed there);
* :func:`layer_scores` + :func:`mask_contrastive_loss` / :func:`rba_outlier_loss` — the training
  scores of every decoder layer and the two outlier-exposure losses.

All functions take N×Q×20 class logits and N×Q×h×w mask logits (or an N×19×H×W class map) and
are independent of any model class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ood_bench.adapters.base import NUM_CLASSES, OUTLIER_EXPOSURE, VOID
from ood_bench.errors import OodBenchError
from ood_bench.models.mask2former import semantic_scores

#: Mask2Anomaly's refinement classes: trainIds 2…10 = building, wall, fence, pole, traffic light,
#: traffic sign, vegetation, terrain, sky (stuff, without road and sidewalk; no "thing" class).
STUFF_TRAIN_IDS = tuple(range(2, 11))
#: The family name of Mask2Former models (``model.family``).
MASK2FORMER = "mask2former"


def require_mask2former(method: str, model: Any) -> None:
    """A clear error unless ``model.family == "mask2former"`` (query outputs are needed)."""
    family = getattr(model, "family", None)
    if family != MASK2FORMER:
        raise OodBenchError(
            f"method {method!r} needs a Mask2Former model (model.family == {MASK2FORMER!r}, e.g. "
            f"mask2former-r50 or mask2former-tiny), got {type(model).__name__} with family "
            f"{family!r}"
        )


def check_query_outputs(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> None:
    """Clear errors for query outputs of the wrong shape."""
    if class_logits.ndim != 3 or class_logits.shape[-1] != NUM_CLASSES + 1:
        raise OodBenchError("class logits must be N×Q×20 (19 classes + no-object), got "
                            f"{tuple(class_logits.shape)}")
    if mask_logits.ndim != 4 or mask_logits.shape[:2] != class_logits.shape[:2]:
        raise OodBenchError(f"mask logits must be N×Q×h×w with N×Q = "
                            f"{tuple(class_logits.shape[:2])}, got {tuple(mask_logits.shape)}")


def mask_msp_score(class_map: torch.Tensor) -> torch.Tensor:
    """Mask2Anomaly's anomaly score ``1 − max_c S_c`` (N×19×H×W → N×H×W)."""
    return 1.0 - class_map.amax(1)


def rba_score(class_map: torch.Tensor) -> torch.Tensor:
    """RbA, "Rejected by All": ``−Σ_c tanh(S_c)`` (N×19×H×W → N×H×W); 0 where no class claims
    the pixel, down to −19 where all do."""
    return -torch.tanh(class_map).sum(1)


def upsampled_masks(mask_logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``σ(mask)`` at ``size`` (bilinear, align_corners=False, as Mask2Former's inference)."""
    if tuple(mask_logits.shape[-2:]) != tuple(size):
        mask_logits = F.interpolate(mask_logits.float(), size=tuple(size), mode="bilinear",
                                    align_corners=False)
    return mask_logits.float().sigmoid()


def confident_stuff_mask(class_logits: torch.Tensor, mask_logits: torch.Tensor,
                         size: Sequence[int], *, threshold: float = 0.95,
                         classes: Sequence[int] = STUFF_TRAIN_IDS) -> torch.Tensor:
    """Mask2Anomaly's refinement region (N×H×W bool; ``research/baselines.md`` §6.4).

    Kept queries: argmax of the 20-way softmax in ``classes`` and max probability
    > ``threshold``. ``R(x) = max over kept queries of p_q · σ(mask_q(x))`` (masks at ``size``);
    the region is ``R ≥ 0.5``, and empty for an image that keeps fewer than two queries (the
    reference's ``> 1`` condition). Only kept queries' masks are upsampled.
    """
    check_query_outputs(class_logits, mask_logits)
    top, label = class_logits.float().softmax(-1).max(-1)
    allowed = torch.tensor(list(classes), device=label.device)
    keep = (top > threshold) & torch.isin(label, allowed)
    region = torch.zeros((len(class_logits), *size), dtype=torch.bool,
                         device=class_logits.device)
    for n in range(len(class_logits)):
        kept = keep[n].nonzero()[:, 0]
        if len(kept) > 1:
            weighted = top[n, kept, None, None] * upsampled_masks(mask_logits[n, kept][None],
                                                                 size)[0]
            region[n] = weighted.amax(0) >= 0.5
    return region


# --- training -------------------------------------------------------------------------------


def decoder_layers(taps: dict[str, torch.Tensor], prefix: str = ""
                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(class logits, mask logits) of every decoder layer, earlier layers first.

    ``prefix="ood_"`` takes the class logits of the model's OOD head (same masks). Auxiliary
    layers are included when the taps hold them.
    """
    final = (taps[f"{prefix}class_logits"], taps["mask_logits"])
    aux_class = taps.get(f"{prefix}aux_class_logits")
    aux_mask = taps.get("aux_mask_logits")
    if aux_class is None or aux_mask is None:
        return [final]
    return [*zip(aux_class.unbind(0), aux_mask.unbind(0), strict=True), final]


def layer_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor, size: Sequence[int],
                 score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """A training score map at the label ``size``: ``score(S)`` on the mask-resolution class
    map, bilinearly resized with align_corners=True (Mask2Anomaly's and RbA's criterion)."""
    scores = score(semantic_scores(class_logits, mask_logits))[:, None]
    return F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=True)[:, 0]


def layered_ood_loss(taps: dict[str, torch.Tensor], labels: torch.Tensor,
                     score: Callable[[torch.Tensor], torch.Tensor],
                     loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     prefix: str = "") -> torch.Tensor:
    """``Σ over decoder layers of loss(layer score map, labels)`` (deep supervision of the OOD
    loss, as Mask2Anomaly and RbA); ``labels`` N×H×W sets the score maps' size."""
    size = labels.shape[-2:]
    return sum(loss(layer_scores(c, m, size, score), labels)
               for c, m in decoder_layers(taps, prefix))


def negative_max_score(class_map: torch.Tensor) -> torch.Tensor:
    """``−max_c S_c``: the training score of Mask2Anomaly and of CG-Aug on Mask2Former."""
    return -class_map.amax(1)


def mask_contrastive_loss(scores: torch.Tensor, label: torch.Tensor,
                          margin: float = 1.0) -> torch.Tensor:
    """Mask2Anomaly's "margin" loss on N×H×W scores ``−max_c S_c``:
    ``½ [mean_in score² + mean_out max(0, margin − score)²]``.

    "out" = pasted objects (254); "in" = every other pixel, void (255) included as in the
    reference; the outlier term is only added when the batch has outlier pixels.
    """
    outlier = label == OUTLIER_EXPOSURE
    loss = scores[~outlier].square().mean() if (~outlier).any() else scores.sum() * 0
    if outlier.any():
        loss = loss + F.relu(margin - scores[outlier]).square().mean()
    return 0.5 * loss


def rba_outlier_loss(scores: torch.Tensor, label: torch.Tensor, inlier_upper: float = 0.0,
                     outlier_lower: float = 5.0) -> torch.Tensor:
    """RbA's squared hinge on N×H×W scores ``−Σ tanh(S)``, void (255) excluded:
    ``mean_in max(0, s − γ_in)²``, and ``½ [that + mean_out max(0, γ_out − s)²]`` when the batch
    has outlier pixels (254). Released defaults γ_in = 0, γ_out = 5."""
    outlier = label == OUTLIER_EXPOSURE
    inlier = ~outlier & (label != VOID)
    loss = (F.relu(scores[inlier] - inlier_upper).square().mean() if inlier.any()
            else scores.sum() * 0)
    if outlier.any():
        loss = 0.5 * (loss + F.relu(outlier_lower - scores[outlier]).square().mean())
    return loss
