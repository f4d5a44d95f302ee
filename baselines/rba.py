"""RbA, "Rejected by All" (Nayal et al., ICCV 2023): ``−Σ_k tanh(f_k)`` on a Mask2Former.

``f_k = Σ_q softmax(class_q)_k σ(mask_q)`` (no-object dropped) is the model's per-pixel class
map (``SegOutput.logits``). A pixel that every class's masks reject scores 0, one that several
classes claim scores near their negative count (``research/baselines.md`` §7).

* ``rba``: the score of the given model, no training and no extra data.
* ``rba+oe``: RbA's optional outlier-exposure fine-tuning of a copy of the model. Only the
  mask-embedding MLP trains (``model.mask_embed``), with the Mask2Former set losses plus the
  squared hinge ``½ [mean_in max(0, s − γ_in)² + mean_out max(0, γ_out − s)²]`` (void excluded,
  γ_in = 0, γ_out = 5 as in the released config) of ``s = −Σ tanh(f)`` on every decoder layer,
  objects pasted with probability 0.1 (``OOD_PROB``). Its masks — hence its segmentation —
  are the fine-tuned model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import nn

from ood_bench.models.base import SegOutput

from .base import Method, register_method
from .mask2former_training import FineTunedMask2Former, MaskFinetuneRecipe, OodLoss
from .mask_classification import (
    MASK2FORMER,
    layered_ood_loss,
    rba_outlier_loss,
    rba_score,
    require_mask2former,
)
from .outlier_exposure import CocoOutliers, OutlierSource, default_outliers


@dataclass(frozen=True)
class RbARecipe(MaskFinetuneRecipe):
    """The fine-tuning recipe plus RbA's hinge thresholds and COCO proxy size."""

    inlier_upper: float = 0.0
    outlier_lower: float = 5.0
    coco_proxy_size: int = 300


#: ``ckpts/swin_b_1dl_rba_ood_coco/config.yaml``: 2000 iterations, batch 16, 512×1024 crops,
#: AdamW lr 1e-4 (wd 0.05, poly 0.9), mask-embedding MLP only, COCO (300 images) pasted with
#: probability 0.1. The gradient clip (0.01, full model) is Mask2Former's base-config default,
#: not stated in our notes for RbA.
PUBLISHED = RbARecipe(steps=2000, batch_size=16, crop=(512, 1024), lr=1e-4,
                      outlier_scales=(1.0,), paste_probability=0.1, trainable=("mask_embed",))
#: CPU recipe of the synthetic benchmark (whole 64×128 frames, batch 8, 150 steps).
SYNTHETIC = replace(PUBLISHED, steps=150, batch_size=8, crop=None, num_points=2048)
RECIPES = {"real": PUBLISHED, "synthetic": SYNTHETIC}


@register_method("rba")
class RbA(Method):
    """RbA's score of a Mask2Former model. Option: ``smoothing``."""

    name = "rba"
    model_families = (MASK2FORMER,)

    def forward_model(self, model: nn.Module, images: torch.Tensor) -> SegOutput:
        require_mask2former(self.name, model)
        return model(images, taps=())

    def score_output(self, output: SegOutput) -> torch.Tensor:
        return rba_score(output.logits.float())


@register_method("rba+oe")
class RbAOutlierExposure(FineTunedMask2Former, RbA):
    """RbA after fine-tuning the mask embedding with outlier exposure. Options: ``recipe``
    ("auto", "real", "synthetic"), ``outlier_root`` (COCO folder for real data),
    ``smoothing``."""

    name = "rba+oe"
    recipes = RECIPES

    def ood_loss(self, recipe: RbARecipe) -> OodLoss:
        hinge = partial(rba_outlier_loss, inlier_upper=recipe.inlier_upper,
                        outlier_lower=recipe.outlier_lower)
        return partial(layered_ood_loss, score=rba_score, loss=hinge)

    def outlier_source(self, dataset: Sequence, recipe: RbARecipe) -> OutlierSource:
        """COCO at ``outlier_root`` subsampled to RbA's 300 images, else the synthetic family."""
        if self.outlier_root is not None:
            return CocoOutliers(self.outlier_root, recipe.coco_proxy_size)
        return default_outliers(dataset, None)
