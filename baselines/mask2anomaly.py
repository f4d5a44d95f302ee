"""Mask2Anomaly (Rai et al., ICCV 2023): mask-classification anomaly segmentation.

Score (``research/baselines.md`` §6.4): ``a(x) = 1 − max_c S_c(x)`` with
``S_c = Σ_q softmax(class_q)_c σ(mask_q)``, the Mask2Former's per-pixel class map (its
``SegOutput.logits``), then

* mask refinement (``refine=True``): pixels under a confidently recognised stuff query (argmax
  class building…sky, probability > 0.95; at least two such queries) get anomaly 0
  (:func:`~ood_bench.baselines.mask_classification.confident_stuff_mask`);
* horizontal-flip averaging (``flip=True``): the mean of the refined scores of the image and of
  its mirror image (mirrored back).

``fit`` is the OOD fine-tuning (§6.2–6.3) of a copy of the model: everything but the (frozen)
backbone trains with the Mask2Former set losses (class 2, mask 5, dice 5, no-object 0.1, deep
supervision; pasted objects count as background of every class mask) plus the mask contrastive
loss ``½ [mean_in s² + mean_out max(0, 1 − s)²]`` of ``s = −max_c S_c`` on every decoder layer,
with an outlier object pasted into a frame with probability 0.2. The segmentation is the
fine-tuned model's. The GMA decoder is a model option (``mask2former-r50-gma``), not part of
the method.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from ood_bench.errors import OodBenchError
from ood_bench.models.base import SegOutput

from .base import MethodOutput, eval_mode, register_method, train_ids
from .mask2former_training import FineTunedMask2Former, MaskFinetuneRecipe, OodLoss
from .mask_classification import (
    confident_stuff_mask,
    layered_ood_loss,
    mask_contrastive_loss,
    mask_msp_score,
    negative_max_score,
)

#: The query outputs the score reads besides the class map.
QUERY_TAPS = ("class_logits", "mask_logits")


@dataclass(frozen=True)
class Mask2AnomalyRecipe(MaskFinetuneRecipe):
    """The fine-tuning recipe plus the mask contrastive loss's margin."""

    margin: float = 1.0


#: ``anomaly_ft.yaml``: 5000 iterations, batch 8, AdamW lr 1e-5 (wd 0.05, poly, backbone ×0.1
#: but frozen), full-model gradient clip 0.01, 380×760 crops with flips, COCO objects pasted
#: unscaled with probability 0.2. (The multi-scale resize and colour augmentation of the
#: reference are not reproduced.)
PUBLISHED = Mask2AnomalyRecipe(steps=5000, batch_size=8, crop=(380, 760), lr=1e-5,
                               outlier_scales=(1.0,))
#: CPU recipe of the synthetic benchmark: whole 64×128 frames, 150 steps at lr 1e-4, 2048
#: sampled points per mask (a 16×32 mask grid has 512 cells).
SYNTHETIC = Mask2AnomalyRecipe(steps=150, batch_size=8, crop=None, lr=1e-4,
                               outlier_scales=(1.0,), num_points=2048)
RECIPES = {"real": PUBLISHED, "synthetic": SYNTHETIC}


def mask2anomaly_score(output: SegOutput, refine: bool = True) -> torch.Tensor:
    """``1 − max_c S_c`` of a Mask2Former output (N×H×W), zeroed on the refinement region."""
    scores = mask_msp_score(output.logits.float())
    if not refine:
        return scores
    region = confident_stuff_mask(output.taps["class_logits"], output.taps["mask_logits"],
                                  scores.shape[-2:])
    return scores.masked_fill(region, 0.0)


@register_method("mask2anomaly")
class Mask2Anomaly(FineTunedMask2Former):
    """Options: ``recipe`` ("auto", "real", "synthetic"), ``outlier_root`` (COCO folder for real
    data), ``refine`` (mask refinement, default on), ``flip`` (flip averaging, default on),
    ``smoothing``."""

    name = "mask2anomaly"
    recipes = RECIPES
    taps = QUERY_TAPS

    def __init__(self, *, recipe: str = "auto", outlier_root: str | None = None,
                 refine: bool = True, flip: bool = True, smoothing: bool = False) -> None:
        super().__init__(recipe=recipe, outlier_root=outlier_root, smoothing=smoothing)
        for option, value in (("refine", refine), ("flip", flip)):
            if not isinstance(value, bool):
                raise OodBenchError(f"{option} must be True or False, got {value!r}")
        self.refine, self.flip = refine, flip

    def config(self) -> dict[str, Any]:
        return {**super().config(), "refine": self.refine, "flip": self.flip}

    def ood_loss(self, recipe: Mask2AnomalyRecipe) -> OodLoss:
        return partial(layered_ood_loss, score=negative_max_score,
                       loss=partial(mask_contrastive_loss, margin=recipe.margin))

    def score_output(self, output: SegOutput) -> torch.Tensor:
        return mask2anomaly_score(output, self.refine)

    def score(self, model: nn.Module, images: torch.Tensor) -> MethodOutput:
        """Scores (flip-averaged when ``flip``) and the fine-tuned model's prediction."""
        with torch.inference_mode(), eval_mode(model):
            output = self.forward_model(model, images)
            scores = self.score_output(output).float()
            if self.flip:
                mirrored = self.score_output(self.forward_model(model, images.flip(-1)))
                scores = 0.5 * (scores + mirrored.float().flip(-1))
            return MethodOutput(self.postprocess(scores), train_ids(output.logits))
