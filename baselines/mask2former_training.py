"""Outlier-exposure fine-tuning of a Mask2Former copy (Mask2Anomaly's ``fit``, RbA's optional one).

Both methods fine-tune with the Mask2Former set criterion (matching + class CE + point-sampled
mask BCE and dice, :mod:`ood_bench.models.mask2former_loss`, deep supervision on) plus an OOD loss
on every decoder layer's score map, on training frames into which an outlier object is pasted
with probability ``paste_probability`` (label 254, ``research/baselines.md`` §0.2). What differs
is in :class:`MaskFinetuneRecipe`: which parameter groups train, the OOD loss and the optimiser
settings. Frozen parts stay in eval mode (BatchNorm statistics fixed, as detectron2's frozen
BatchNorm). The loop is :class:`~ood_bench.baselines.training.TrainingRun` (deterministic,
resumable, cached, DDP).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ood_bench import distributed
from ood_bench.errors import OodBenchError
from ood_bench.models.base import SegOutput
from ood_bench.models.inference import normalize_images

from .base import Method, model_fingerprint
from .mask_classification import MASK2FORMER, require_mask2former
from .outlier_exposure import (
    OutlierRecipe,
    OutlierSource,
    default_outliers,
    draw_outlier,
    outlier_identity,
    paste_objects,
)
from .training import (
    LoopSettings,
    TrainingBatch,
    TrainingRun,
    check_positive_int,
    check_recipe_name,
    current_dist,
    dataset_identity,
    frame_indices,
    pick_recipe,
    sample_rng,
    step_generator,
    training_frame,
)

#: ``ood_loss(taps, labels) -> loss``: the OOD objective of one step's model output.
OodLoss = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True, kw_only=True)
class SetLossSettings:
    """What every Mask2Former fine-tuning shares (Mask2Anomaly, RbA, CG-Aug stage 2): AdamW's
    backbone learning-rate factor, the gradient-norm clip (None: off), the set-criterion weights
    (Mask2Former's 2 / 5 / 5 by default) and the weight of the method's OOD loss."""

    backbone_lr_factor: float = 0.1
    grad_clip: float | None = 0.01
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 12544
    ood_weight: float = 1.0

    def set_criterion(self, *, deep_supervision: bool, outliers: str = "ignore"):
        """The :class:`~ood_bench.models.mask2former_loss.SetCriterion` of these settings."""
        from ood_bench.models.mask2former_loss import SetCriterion

        return SetCriterion(self.class_weight, self.mask_weight, self.dice_weight,
                            self.no_object_weight, self.num_points,
                            deep_supervision=deep_supervision, outliers=outliers)

    def optimizer(self, model: nn.Module, trainable: dict[str, list[nn.Parameter]], lr: float,
                  weight_decay: float, clipped: Sequence[nn.Parameter]) -> torch.optim.AdamW:
        """AdamW over ``trainable`` (:func:`adamw_groups`) whose every step first clips the
        gradient norm of ``clipped`` to ``grad_clip``."""
        optimizer = torch.optim.AdamW(adamw_groups(model, trainable, lr, weight_decay,
                                                   self.backbone_lr_factor))
        if self.grad_clip is not None:
            parameters = list(clipped)

            def clip(*_) -> None:
                torch.nn.utils.clip_grad_norm_(parameters, self.grad_clip)

            optimizer.register_step_pre_hook(clip)
        return optimizer


@dataclass(frozen=True)
class MaskFinetuneRecipe(OutlierRecipe, SetLossSettings):
    """Schedule, pasting, optimiser (AdamW, poly decay) and set-criterion weights.

    ``trainable`` names the parameter groups that train: keys of ``model.param_groups()`` or
    ``"mask_embed"`` (``model.mask_embed``). Norm and embedding parameters get no weight decay
    (detectron2's ``WEIGHT_DECAY_NORM = WEIGHT_DECAY_EMBED = 0``); ``grad_clip`` clips the
    trained parameters' gradient norm.
    """

    paste_probability: float = 0.2
    trainable: tuple[str, ...] = ("pixel_decoder", "transformer_decoder", "class_head")
    weight_decay: float = 0.05
    #: Pasted objects are background of every class mask (Mask2Anomaly), or ignored.
    outliers_in_masks: str = "background"


def outlier_batch(dataset: Sequence, seed: int, step: int, batch_size: int,
                  dist: distributed.Dist, *, crop: tuple[int, int] | None,
                  outliers: OutlierSource, probability: float,
                  scales: Sequence[float] = (1.0,)) -> TrainingBatch:
    """This rank's frames of ``step`` with an outlier object pasted into each with
    ``probability`` (Mask2Anomaly's ``ANOMALY_MIX_RATIO``, RbA's ``OOD_PROB``); every frame draws
    from its own :func:`~ood_bench.baselines.training.sample_rng`."""
    images, labels = [], []
    for position, index in frame_indices(seed, step, batch_size, len(dataset), dist):
        rng = sample_rng(seed, step, position)
        image, label = training_frame(dataset[index], rng, crop, flip=True)
        if rng.random() < probability:
            source = draw_outlier(outliers, scales, *label.shape, rng)
            image, label = paste_objects(image, label, source, rng)
        images.append(image)
        labels.append(label)
    return TrainingBatch(np.stack(images), np.stack(labels))


def trainable_parameters(model: nn.Module, names: Sequence[str]) -> dict[str, list[nn.Parameter]]:
    """The parameters of the named groups (``model.param_groups()`` keys or ``"mask_embed"``)."""
    groups = model.param_groups()
    out = {}
    for name in names:
        if name == "mask_embed":
            module = getattr(model, "mask_embed", None)
            if not isinstance(module, nn.Module):
                raise OodBenchError(f"{type(model).__name__} has no 'mask_embed' module to train")
            out[name] = list(module.parameters())
        elif name in groups:
            out[name] = list(groups[name])
        else:
            raise OodBenchError(f"unknown parameter group {name!r}; valid: "
                                f"{', '.join(sorted(groups))}, mask_embed")
    return out


def no_decay_parameters(model: nn.Module) -> set[int]:
    """Ids of norm-layer and embedding parameters (trained without weight decay)."""
    return {id(p) for m in model.modules() if isinstance(m, (*NORM_TYPES, nn.Embedding))
            for p in m.parameters(recurse=False)}


def adamw_groups(model: nn.Module, trainable: dict[str, list[nn.Parameter]], lr: float,
                 weight_decay: float, backbone_lr_factor: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: the backbone at ``lr × backbone_lr_factor``, norms and
    embeddings without weight decay (empty groups dropped)."""
    no_decay = no_decay_parameters(model)
    groups = []
    for name, params in trainable.items():
        rate = lr * (backbone_lr_factor if name == "backbone" else 1.0)
        for decay in (True, False):
            chosen = [p for p in params if (id(p) not in no_decay) == decay]
            if chosen:
                groups.append({"params": chosen, "lr": rate,
                               "weight_decay": weight_decay if decay else 0.0})
    return groups


def frozen_norms(model: nn.Module) -> list[nn.Module]:
    """Norm and dropout layers none of whose own parameters train: kept in eval mode."""
    return [module for module in model.modules() if isinstance(module, (*NORM_TYPES, nn.Dropout))
            and not any(p.requires_grad for p in module.parameters(recurse=False))]


def norms_within(model: nn.Module, parameters: Sequence[nn.Parameter]) -> list[nn.Module]:
    """BatchNorm layers whose own parameters all belong to ``parameters`` (e.g. the backbone's:
    CG-Aug keeps them in eval mode while their affine weights train)."""
    ids = {id(p) for p in parameters}
    return [module for module in model.modules()
            if isinstance(module, nn.modules.batchnorm._NormBase)
            and all(id(p) in ids for p in module.parameters(recurse=False))
            and any(True for _ in module.parameters(recurse=False))]


def fine_tune(name: str, model: nn.Module, dataset: Sequence, recipe: MaskFinetuneRecipe,
              ood_loss: OodLoss, outliers: OutlierSource, *, device: torch.device, seed: int,
              progress: bool, checkpoint_every: int, threads: int, distributed: bool,
              on_step=None) -> tuple[nn.Module, str]:
    """Fine-tune a copy of ``model`` (the given one is untouched); returns (copy, cache key)."""
    if len(dataset) == 0:
        raise OodBenchError("the training set is empty")
    tuned = copy.deepcopy(model).to(device)
    tuned.requires_grad_(False)
    trainable = trainable_parameters(tuned, recipe.trainable)
    for params in trainable.values():
        for parameter in params:
            parameter.requires_grad_(True)
    optimizer = recipe.optimizer(tuned, trainable, recipe.lr, recipe.weight_decay,
                                 [p for params in trainable.values() for p in params])
    criterion = recipe.set_criterion(deep_supervision=True, outliers=recipe.outliers_in_masks)
    key = {"model": model_fingerprint(model), "dataset": dataset_identity(dataset),
           "recipe": asdict(recipe), "outliers": outlier_identity(outliers)}
    settings = LoopSettings(recipe.steps, seed, checkpoint_every, threads, progress)
    run = TrainingRun(name, key, tuned, optimizer, settings)
    dist = current_dist(device, joint=distributed)
    keep_eval = frozen_norms(tuned)

    def step_fn(module: nn.Module, step: int):
        for layer in keep_eval:
            layer.eval()
        batch = outlier_batch(dataset, seed, step, recipe.batch_size, dist, crop=recipe.crop,
                              outliers=outliers, probability=recipe.paste_probability,
                              scales=recipe.outlier_scales)
        x = normalize_images(batch.images, device)
        y = torch.as_tensor(batch.labels.astype(np.int64), device=device)
        output = module(x)
        set_loss, _ = criterion(output, y, generator=step_generator(seed, step,
                                                                            dist.rank))
        ood = ood_loss(output.taps, y)
        terms = {"set": set_loss.item(), "ood": ood.item()}
        return set_loss + recipe.ood_weight * ood, terms

    run.run(step_fn, batch_images=recipe.batch_size, dist=dist, on_step=on_step)
    return tuned.eval(), run.key


class FineTunedMask2Former(Method):
    """A method whose ``fit`` is :func:`fine_tune` of a Mask2Former copy, which it then scores.

    Subclasses set ``recipes`` ("real", "synthetic"), the ``taps`` their score reads and
    implement :meth:`ood_loss`; :meth:`outlier_source` may pick another default outlier set.
    Options: ``recipe`` ("auto", "real", "synthetic"), ``outlier_root`` (COCO folder for real
    data), ``smoothing``.
    """

    requires_fit = True
    changes_segmentation = True
    model_families = (MASK2FORMER,)
    recipes: dict[str, MaskFinetuneRecipe] = {}
    taps: tuple[str, ...] = ()

    def __init__(self, *, recipe: str = "auto", outlier_root: str | None = None,
                 smoothing: bool = False) -> None:
        super().__init__(smoothing=smoothing)
        self.recipe_name = check_recipe_name(recipe, self.recipes)
        self.outlier_root = outlier_root
        self.model: nn.Module | None = None
        self.trained_key: str | None = None

    def config(self) -> dict[str, Any]:
        return {**super().config(), "recipe": self.recipe_name, "trained": self.trained_key}

    def ood_loss(self, recipe: MaskFinetuneRecipe) -> OodLoss:
        """The OOD objective added to the set criterion."""
        raise NotImplementedError

    def outlier_source(self, dataset: Sequence, recipe: MaskFinetuneRecipe) -> OutlierSource:
        """COCO at ``outlier_root``, else the synthetic outlier family (synthetic frames)."""
        return default_outliers(dataset, self.outlier_root)

    def fit(self, model: nn.Module, train_dataset: Sequence, *, device: str | torch.device = "cpu",
            seed: int = 0, steps: int | None = None, outliers: OutlierSource | None = None,
            progress: bool = False, checkpoint_every: int = 50, threads: int = 1,
            distributed: bool = False, on_step=None) -> None:
        """Fine-tune a copy of ``model`` (or load it from the cache).

        ``steps`` overrides the recipe's length, ``outliers`` the outlier source;
        ``distributed=True`` trains jointly with every rank (call it on all).
        """
        require_mask2former(self.name, model)
        recipe = pick_recipe(self.recipe_name, train_dataset, self.recipes)
        if steps is not None:
            recipe = replace(recipe, steps=check_positive_int("steps", steps))
        if outliers is None:
            outliers = self.outlier_source(train_dataset, recipe)
        self.model, self.trained_key = fine_tune(
            self.name, model, train_dataset, recipe, self.ood_loss(recipe), outliers,
            device=torch.device(device), seed=seed, progress=progress,
            checkpoint_every=checkpoint_every, threads=threads, distributed=distributed,
            on_step=on_step)

    def forward_model(self, model: nn.Module, images: torch.Tensor) -> SegOutput:
        if self.model is None:
            raise OodBenchError(f"method {self.name!r} is not fitted: call fit(model, dataset)")
        return self.model.to(images.device)(images, taps=self.taps)
