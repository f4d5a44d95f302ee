"""CG-Aug on Mask2Former (MultiShiftSeg ``train_m2f.py``, ``exps/M2F.yaml``;
``research/seed-code.md`` §2–§4): the ``cgaug`` method dispatches Mask2Former models here.

The uncertainty function reads a second class head W° (the model's ``ood_head``, initialised
from the class head, sharing the mask embedding): with ``S°_c = Σ_q softmax(W° q)_c σ(m_q)``
(no-object dropped, masks at image size) the test score is ``1 − max_c S°_c`` and the score in
the relative contrastive loss is ``−max_c S°_c`` (the two differ by a constant, so the hinges
are the same), margins (0.7, 0.5, 0.2). Batches are the DeepLab trainer's (:func:`paired_batch`:
B originals with a pasted outlier object + their B generated partners, same crop and flip,
mixup ≤ 0.3).

* Stage 1: W° only (Adam lr 1e-4, wd 1e-4), the rest frozen in eval mode; loss = the relative
  contrastive loss alone (the reference's CE weights are 0). The segmentation is unchanged.
* Stage 2: every parameter (AdamW lr 1e-5, backbone ×0.1, wd 0.05 — none on norms and
  embeddings —, full-model gradient clip 0.01), the backbone's BatchNorm kept in eval mode; loss
  = Mask2Former set losses on the final layer only (class 5, mask 10, dice 10, no-object 0.1) +
  the relative contrastive loss (weight 1). The set losses' points are random on the originals
  (their mask and dice losses ×2) and "clean" on the generated half
  (:func:`~ood_bench.models.mask2former_loss.select_low_loss_points`: the lowest-BCE 0.95·P of
  1.25·P random points plus 0.05·P random ones); the class loss is the mean of the two halves'.

Learning rates are constant within a stage (no scheduler in the reference). Not reproduced: the
reference's photometric/geometric augmentations of the M2F trainer and its model selection on
SMIYC RoadAnomaly21 validation (oodbench keeps the last step).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from ood_bench.baselines.base import model_fingerprint, train_ids
from ood_bench.baselines.mask2former_training import SetLossSettings, norms_within
from ood_bench.baselines.mask_classification import require_mask2former
from ood_bench.baselines.outlier_exposure import OutlierSource, outlier_identity
from ood_bench.baselines.training import (
    LoopSettings,
    TrainingRun,
    current_dist,
    dataset_identity,
    pick_recipe,
    step_generator,
)
from ood_bench.distributed import Dist
from ood_bench.models.mask2former import semantic_scores

from .loss import relative_contrastive_loss
from .training import COCO_SCALES, CGAugRecipe, batch_tensors, paired_batch
from .training import RECIPES as DEEPLAB_RECIPES

#: The Mask2Former margins (m1, m2, m3) of ``exps/M2F.yaml`` (scores in [−1, 0]).
M2F_MARGINS = (0.7, 0.5, 0.2)
#: The test-time and loss taps.
OOD_TAPS = ("ood_class_logits", "mask_logits")


@dataclass(frozen=True)
class M2FCGAugRecipe(CGAugRecipe, SetLossSettings):
    """CG-Aug's recipe plus the Mask2Former stage-2 optimiser and set-loss settings."""

    stage2_weight_decay: float = 0.05
    original_mask_factor: float = 2.0


#: ``exps/M2F.yaml``: 50 epochs with the switch at epoch 5 → 4 + 45 epochs of 371 iterations
#: (2975 pairs, batch 8 + 8), 700×700 crops with flips, Adam 1e-4 (wd 1e-4) then AdamW 1e-5,
#: COCO objects rescaled by 0.1–1.0; set losses class 5, mask 10, dice 10.
REAL = M2FCGAugRecipe(stage1_steps=4 * 371, stage2_steps=45 * 371, batch_size=8,
                      crop=(700, 700), flip=True, stage2_lr=1e-5, margins=M2F_MARGINS,
                      ce_weights=(0.0, 0.0), selection_ratio=None, outlier_scales=COCO_SCALES,
                      class_weight=5.0, mask_weight=10.0, dice_weight=10.0)
#: CPU recipe of the synthetic benchmark: whole 64×128 frames, 100 + 100 steps, lr 1e-3 / 1e-4,
#: 2048 points per mask, the synthetic outlier family at its rendered size.
SYNTHETIC = replace(REAL, stage1_steps=100, stage2_steps=100, crop=None, stage1_lr=1e-3,
                    stage2_lr=1e-4, num_points=2048, outlier_scales=(1.0,))
RECIPES = {"real": REAL, "synthetic": SYNTHETIC}


def with_ood_head(model: nn.Module) -> nn.Module:
    """A copy of a Mask2Former ``model`` with W° initialised from its class head (a model that
    already has an OOD head keeps it)."""
    require_mask2former("cgaug", model)
    tuned = copy.deepcopy(model)
    if tuned.ood_head is None:
        head = tuned.class_predictor
        tuned.ood_head = nn.Linear(head.in_features, head.out_features).to(head.weight.device)
        tuned.init_ood_head()
    return tuned


def ood_class_map(output, size: Sequence[int]) -> torch.Tensor:
    """``S°`` (N×19×H×W) of a model output with the OOD head's class logits, masks at ``size``."""
    return semantic_scores(output.taps["ood_class_logits"], output.taps["mask_logits"], size)


def score_mask2former(model: nn.Module, images: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """CG-Aug's test score ``1 − max_c S°_c`` (N×H×W) and the model's trainId prediction."""
    output = model(images, taps=OOD_TAPS)
    return 1.0 - ood_class_map(output, images.shape[-2:]).amax(1), train_ids(output.logits)


def set_losses(criterion, output, labels: torch.Tensor, recipe: M2FCGAugRecipe,
               generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 2's set losses of a 2B batch: originals with random points (mask and dice losses
    × ``original_mask_factor``), generated partners with clean point selection."""
    half = len(labels) // 2
    parts = []
    for rows, clean in ((slice(0, half), False), (slice(half, None), True)):
        taps = {name: output.taps[name][rows] for name in ("class_logits", "mask_logits")}
        _, terms = criterion(taps, labels[rows], point_selection=[clean] * half,
                             generator=generator)
        parts.append(terms)
    original, generated = parts
    factor = recipe.original_mask_factor
    ce = 0.5 * (original["loss_ce"] + generated["loss_ce"])
    mask = factor * original["loss_mask"] + generated["loss_mask"]
    dice = factor * original["loss_dice"] + generated["loss_dice"]
    total = recipe.class_weight * ce + recipe.mask_weight * mask + recipe.dice_weight * dice
    return total, {"ce": ce.item(), "mask": mask.item(), "dice": dice.item()}


def set_stage_modes(model: nn.Module, stage: int, backbone_norms: Sequence[nn.Module]) -> None:
    """Stage 1: eval mode everywhere; stage 2: train mode except the backbone's norms."""
    model.train(stage == 2)
    for layer in backbone_norms:
        layer.eval()


def m2f_step(model: nn.Module, trainable: nn.Module, pairs: Sequence,
             outliers: OutlierSource | None, recipe: M2FCGAugRecipe, stage: int, criterion,
             backbone_norms: Sequence[nn.Module], seed: int, step: int, dist: Dist,
             device: torch.device):
    """One step's loss and terms (``trainable``: ``model`` or its DDP wrapper)."""
    set_stage_modes(model, stage, backbone_norms)
    batch = paired_batch(pairs, seed, step, recipe.batch_size, dist, crop=recipe.crop,
                         flip=recipe.flip, outliers=outliers,
                         outlier_scales=recipe.outlier_scales, mixup_max=recipe.mixup_max)
    images, labels = batch_tensors(batch, device)
    taps = (*OOD_TAPS, "class_logits") if stage == 2 else OOD_TAPS
    output = trainable(images, taps=taps)
    scores = -ood_class_map(output, labels.shape[-2:]).amax(1)
    generator = step_generator(seed, step, dist.rank)
    contrastive, terms = relative_contrastive_loss(scores, labels, recipe.margins, generator)
    if stage == 1:
        return contrastive, terms
    loss, set_terms = set_losses(criterion, output, labels, recipe, generator)
    return loss + recipe.ood_weight * contrastive, {**terms, **set_terms}


def stage_optimizer(model: nn.Module, stage: int, recipe: M2FCGAugRecipe
                    ) -> torch.optim.Optimizer:
    """Stage 1: Adam on W°; stage 2: AdamW on everything (backbone ×0.1, gradient clip)."""
    model.requires_grad_(False)
    groups = model.param_groups()
    if stage == 1:
        model.ood_head.requires_grad_(True)
        return torch.optim.Adam(groups["ood_head"], lr=recipe.stage1_lr,
                                weight_decay=recipe.weight_decay)
    model.requires_grad_(True)
    return recipe.optimizer(model, groups, recipe.stage2_lr, recipe.stage2_weight_decay,
                            model.parameters())


def train_two_stages(model: nn.Module, pairs: Sequence, outliers: OutlierSource | None,
                     recipe: M2FCGAugRecipe, key: dict[str, Any], *, seed: int = 0,
                     device: torch.device | str = "cpu", dist: Dist | None = None,
                     progress: bool = False, checkpoint_every: int = 50, threads: int = 1,
                     on_step=None) -> tuple[nn.Module, list[str]]:
    """Train a copy of ``model`` (with W°) in two cached stages; returns it (eval mode, no
    gradients) and the stages' cache keys. ``key`` identifies the model and the data."""
    dist = dist or Dist()
    device = torch.device(device)
    tuned = with_ood_head(model).to(device)
    backbone_norms = norms_within(tuned, tuned.param_groups()["backbone"])
    criterion = recipe.set_criterion(deep_supervision=False)
    keys: list[str] = []
    for stage, steps in ((1, recipe.stage1_steps), (2, recipe.stage2_steps)):
        if steps == 0:
            continue
        optimizer = stage_optimizer(tuned, stage, recipe)
        rates = [group["lr"] for group in optimizer.param_groups]
        settings = LoopSettings(steps, seed, checkpoint_every, threads, progress)
        run = TrainingRun(f"cgaug-m2f-stage{stage}",
                          {**key, "recipe": asdict(recipe), "stage": stage, "after": keys[-1:]},
                          tuned, optimizer, settings)

        def step_fn(trainable: nn.Module, step: int, stage: int = stage,
                    optimizer: torch.optim.Optimizer = optimizer, rates: list = rates):
            for group, rate in zip(optimizer.param_groups, rates, strict=True):
                group["lr"] = rate  # constant within a stage (no scheduler in the reference)
            return m2f_step(tuned, trainable, pairs, outliers, recipe, stage, criterion,
                            backbone_norms, seed, step, dist, device)

        run.run(step_fn, batch_images=2 * recipe.batch_size, dist=dist, on_step=on_step)
        keys.append(run.key)
    tuned.requires_grad_(False)
    return tuned.eval(), keys


def fit_mask2former(method, model: nn.Module, pairs, *, recipe: CGAugRecipe | None = None,
                    outliers: OutlierSource | None, steps: int | None = None,
                    device: torch.device | str = "cpu", seed: int = 0, progress: bool = False,
                    checkpoint_every: int = 50, threads: int = 1, distributed: bool = False,
                    on_step=None) -> None:
    """The ``cgaug`` method's ``fit`` for a Mask2Former: two-stage training on ``pairs``
    (:class:`~ood_bench.cgaug.pairs.PairedFrames`); sets ``method.model`` and
    ``method.trained_key``. The Mask2Former recipe is picked like the method's own
    (``method.recipe_name``); ``steps`` sets the total length (split like the recipe's stages).
    Without ``steps``, a ``recipe`` (the DeepLab recipe the method picked) whose total length
    differs from its default passes that length on."""
    m2f_recipe = pick_recipe(method.recipe_name, pairs.originals, RECIPES)
    if steps is None and recipe is not None:  # the method's ``steps`` option shortened it
        default = pick_recipe(method.recipe_name, pairs.originals, DEEPLAB_RECIPES)
        total = recipe.stage1_steps + recipe.stage2_steps
        if total != default.stage1_steps + default.stage2_steps:
            steps = total
    if steps is not None:
        m2f_recipe = m2f_recipe.with_total_steps(steps)
    key = {"model": model_fingerprint(model),
           "pairs": {"originals": dataset_identity(pairs.originals),
                     "generated": dataset_identity(pairs.generated), "count": len(pairs)},
           "outliers": None if outliers is None else outlier_identity(outliers)}
    dist = current_dist(device, joint=distributed)
    tuned, keys = train_two_stages(model, pairs, outliers, m2f_recipe, key, seed=seed,
                                   device=device, dist=dist, progress=progress,
                                   checkpoint_every=checkpoint_every, threads=threads,
                                   on_step=on_step)
    method.model, method.trained_key = tuned, keys[-1]
