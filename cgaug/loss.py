"""CG-Aug's noise-aware training loss (MultiShiftSeg ``lib/loss.py``, ``RelContrastiveLoss``).

A batch holds 2B images: the first B are originals (one outlier-exposure object pasted, label
254), the last B their generated partners, spatially aligned (same crop and flip), so pixel p of
image i and of image i + B show the same place of the same label map. Labels are trainIds
(< 19 in-distribution), 254 (OOD: the pasted object or the generated novel object) and 255
(void). ``scores`` are uncertainty maps u(x), higher = more OOD (the free energy
``−logsumexp W° f(x)``).

Relative contrastive loss, with τ a plain hinge ``max(0, ·)`` and margins (m1, m2, m3):

* term 1: ``mean max(0, s_in + m1 − s_out)`` — original in-distribution vs OOD pixels;
* term 2: ``mean max(0, s_aug + m2 − s_out)`` — generated in-distribution vs OOD pixels;
  Ω_in (< 19 in the originals), Ω_aug (< 19 in the generated half) and Ω_out (254 in both
  halves) are each randomly permuted and truncated to n = min(|Ω_in|, |Ω_aug|, |Ω_out|), then
  paired element-wise (random one-to-one pairs, as the reference);
* term 3: ``mean over M of max(0, s_gen(p) − s_orig(p) − m3)`` over the positions M that are
  in-distribution in both an original and its partner (a same-location term, one-sided).

An empty OOD set (or in-distribution set) makes terms 1–2 zero, an empty M term 3 — zeros that
stay in the autograd graph (DDP needs every parameter in the graph). The reference has no such
guard (its COCO paste always adds OOD pixels).

Cross-entropy parts (254 counts as ignored, like void):

* ``CE_orig``: summed over the original half and divided by *all* its pixels, ignored ones
  included — the reference's ``reduction='none'`` followed by ``.mean()``;
* ``CE_aug``: on the generated half, averaged over the pixels that small-loss selection keeps
  (the lowest-loss ``ratio`` of the valid pixels, ranked globally over the half-batch).

Total: ``β1 · CE_orig + β2 · CE_aug + (term 1 + term 2 + term 3)`` with β = (50, 10) for DeepLab.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ood_bench.adapters.base import NUM_CLASSES, OUTLIER_EXPOSURE, VOID
from ood_bench.errors import OodBenchError

#: DeepLab margins (m1, m2, m3) and cross-entropy weights (β1, β2) of ``exps/DeepLab.yaml``.
DEEPLAB_MARGINS = (10.0, 5.0, 5.0)
DEEPLAB_CE_WEIGHTS = (50.0, 10.0)
#: Fraction of valid generated pixels small-loss selection keeps.
SELECTION_RATIO = 0.8


def _halves(tensor: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if tensor.shape[0] % 2 or tensor.shape[0] == 0:
        raise OodBenchError(f"{name} must hold 2B images (B originals, then B generated "
                            f"partners), got a batch of {tensor.shape[0]}")
    half = tensor.shape[0] // 2
    return tensor[:half], tensor[half:]


def _sample(values: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` of ``values`` in random order (a seeded permutation, truncated)."""
    order = torch.randperm(len(values), generator=generator)[:n].to(values.device)
    return values[order]


def relative_contrastive_loss(
    scores: torch.Tensor, labels: torch.Tensor,
    margins: Sequence[float] = DEEPLAB_MARGINS, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The three hinge terms (see the module docstring) of 2B×H×W ``scores`` and ``labels``.

    ``generator`` (CPU) drives the random pairing. Returns ``(loss, terms)``: the summed loss and
    the three terms as floats plus ``pairs`` (n) and ``same_location`` (|M|).
    """
    if scores.shape != labels.shape or scores.ndim != 3:
        raise OodBenchError(f"scores and labels must both be 2B×H×W, got {tuple(scores.shape)} "
                            f"and {tuple(labels.shape)}")
    if len(margins) != 3:
        raise OodBenchError(f"margins must be (m1, m2, m3), got {margins!r}")
    m1, m2, m3 = (float(m) for m in margins)
    original, generated = _halves(scores, "scores")
    label_original, label_generated = _halves(labels, "labels")
    inlier_original = label_original < NUM_CLASSES
    inlier_generated = label_generated < NUM_CLASSES
    s_in = original[inlier_original]
    s_aug = generated[inlier_generated]
    s_out = scores[labels == OUTLIER_EXPOSURE]
    n = min(len(s_in), len(s_aug), len(s_out))
    zero = scores.sum() * 0
    if n:
        s_in, s_aug, s_out = (_sample(s, n, generator) for s in (s_in, s_aug, s_out))
        term1 = F.relu(s_in + m1 - s_out).mean()
        term2 = F.relu(s_aug + m2 - s_out).mean()
    else:
        term1 = term2 = zero
    same = inlier_original & inlier_generated
    term3 = F.relu(generated[same] - original[same] - m3).mean() if same.any() else zero
    loss = term1 + term2 + term3
    terms = {"in_out": term1.item(), "aug_out": term2.item(), "aug_orig": term3.item(),
             "pairs": float(n), "same_location": float(same.sum().item())}
    return loss, terms


def small_loss_selection(pixel_loss: torch.Tensor, valid: torch.Tensor,
                         ratio: float = SELECTION_RATIO) -> torch.Tensor:
    """The kept-pixel mask: the ``floor(ratio · |valid|)`` valid pixels of lowest loss.

    Ranked globally over the whole tensor (not per image or class); ties go to the pixel that
    comes first in memory order, so the selection is deterministic. ``pixel_loss`` is not
    differentiated through (selection only picks pixels).
    """
    if not 0 < ratio <= 1:
        raise OodBenchError(f"selection ratio must be in (0, 1], got {ratio!r}")
    if pixel_loss.shape != valid.shape:
        raise OodBenchError(f"pixel_loss {tuple(pixel_loss.shape)} and valid "
                            f"{tuple(valid.shape)} differ in shape")
    flat = torch.where(valid, pixel_loss.detach(), torch.inf).reshape(-1)
    keep = int(ratio * int(valid.sum()))
    order = torch.sort(flat, stable=True).indices[:keep]
    kept = torch.zeros_like(flat, dtype=torch.bool)
    kept[order] = True
    return kept.view_as(valid)


def _pixel_ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel cross-entropy with 254 and 255 ignored, and the mask of counted pixels."""
    valid = labels < NUM_CLASSES
    target = torch.where(valid, labels, torch.full_like(labels, VOID))
    return F.cross_entropy(logits, target, ignore_index=VOID, reduction="none"), valid


def original_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE over the original half, divided by all its pixels (ignored ones count as 0)."""
    loss, _ = _pixel_ce(logits, labels)
    return loss.mean()


def generated_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                            ratio: float | None = SELECTION_RATIO) -> tuple[torch.Tensor, int]:
    """CE over the generated half, averaged over the small-loss-selected pixels
    (``ratio=None``: every valid pixel); returns ``(loss, kept pixels)``."""
    loss, valid = _pixel_ce(logits, labels)
    kept = valid if ratio is None else small_loss_selection(loss, valid, ratio)
    count = int(kept.sum())
    return (loss[kept].mean() if count else loss.sum() * 0), count


def noise_aware_loss(
    logits: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, *,
    margins: Sequence[float] = DEEPLAB_MARGINS,
    ce_weights: Sequence[float] = DEEPLAB_CE_WEIGHTS,
    selection_ratio: float | None = SELECTION_RATIO,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``β1 · CE_orig + β2 · CE_aug + L_unc`` of a 2B batch: ``logits`` 2B×C×H×W segmentation
    logits, ``scores`` 2B×H×W uncertainty, ``labels`` 2B×H×W. Returns ``(loss, terms)``."""
    contrastive, terms = relative_contrastive_loss(scores, labels, margins, generator)
    logits_original, logits_generated = _halves(logits, "logits")
    labels_original, labels_generated = _halves(labels, "labels")
    ce_original = original_cross_entropy(logits_original, labels_original)
    ce_generated, kept = generated_cross_entropy(logits_generated, labels_generated,
                                                 selection_ratio)
    beta1, beta2 = ce_weights
    loss = beta1 * ce_original + beta2 * ce_generated + contrastive
    terms.update(ce_orig=ce_original.item(), ce_aug=ce_generated.item(), kept=float(kept))
    return loss, terms
