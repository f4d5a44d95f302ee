"""CG-Aug's two-stage noise-aware training of a DeepLabv3+ (MultiShiftSeg ``train_deeplab.py``).

The uncertainty function is ``u(x) = −logsumexp(W° f(x))``: W° is the model's ``ood_head``, a
bias-free 1×1 conv on the decoder feature f(x), initialised from the segmentation classifier
(so u starts as the energy score); the segmentation logits stay those of the classifier.

Each step draws B pairs (:func:`paired_batch`): an original frame with one outlier-exposure
object pasted (label 254) and its generated partner, cropped and flipped identically; the
partner is mixed with the (unpasted) original, ``p·original + (1 − p)·generated`` with
``p = min(U(0, 1), mixup_max)``. The 2B images go through the model and
:func:`~ood_bench.cgaug.loss.noise_aware_loss` is minimised with Adam:

* stage 1: W° only (lr 1e-4, weight decay 1e-4); the rest of the model is frozen in eval mode,
  so the segmentation is untouched;
* stage 2: ASPP, the two 1×1 bottlenecks (``bot_fine``, ``bot_aspp``) and W° (lr 1e-6), a new
  optimizer; the trunk and the decoder head (``final``: the 3×3 convs producing f(x) and the
  classifier) stay frozen.

The learning rate is constant within a stage, as in the reference (no scheduler; the shared
loop's poly factor is undone in the step). BatchNorm (``bn_mode``): by default frozen parts stay
in eval mode and only the trained ASPP's BatchNorm layers run in train mode, so each stage
changes only what it trains (stage 1 leaves the segmentation untouched). The reference keeps
``model.train()`` throughout — every BatchNorm layer, the frozen trunk's included, re-estimates
its statistics on the original + generated batches in both stages (and dropout is on):
``bn_mode="all"`` reproduces that.

Each stage is a :class:`~ood_bench.baselines.training.TrainingRun` (deterministic, resumable,
cached, DDP). Model selection: the reference saves the epoch with the best AUPRC on the
labelled SMIYC RoadAnomaly21 validation images — selecting on a test benchmark. oodbench keeps
the last step's weights and never selects on an evaluation set.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ood_bench.adapters.base import NUM_CLASSES, OUTLIER_EXPOSURE, VOID
from ood_bench.baselines.outlier_exposure import OutlierSource, draw_outlier, paste_objects
from ood_bench.baselines.training import (
    LoopSettings,
    TrainingRun,
    frame_indices,
    sample_rng,
    step_generator,
)
from ood_bench.distributed import Dist
from ood_bench.errors import OodBenchError
from ood_bench.models.inference import normalize_images

from .loss import DEEPLAB_CE_WEIGHTS, DEEPLAB_MARGINS, SELECTION_RATIO, noise_aware_loss

#: BatchNorm behaviour during training: only the trained parts' layers update their statistics
#: ("trained"), or every layer's does, as the reference's ``model.train()`` ("all").
BN_MODES = ("trained", "all")
#: The reference's COCO rescaling factors {0.1, 0.2, …, 1.0} (``anomaly_mix``).
COCO_SCALES = tuple(round(0.1 * k, 1) for k in range(1, 11))


@dataclass(frozen=True)
class CGAugRecipe:
    """Everything two-stage training learns from (steps count optimizer updates; ``batch_size``
    originals per step, each with its generated partner)."""

    stage1_steps: int
    stage2_steps: int
    batch_size: int
    crop: tuple[int, int] | None
    flip: bool
    stage1_lr: float = 1e-4
    stage2_lr: float = 1e-6
    weight_decay: float = 1e-4
    margins: tuple[float, float, float] = DEEPLAB_MARGINS
    ce_weights: tuple[float, float] = DEEPLAB_CE_WEIGHTS
    selection_ratio: float | None = SELECTION_RATIO
    mixup_max: float = 0.3
    outlier_scales: tuple[float, ...] = COCO_SCALES
    bn_mode: str = "trained"
    #: What stage 2 trains (``param_groups`` names): the paper's ASPP + 1×1 bottlenecks + W°.
    stage2_parts: tuple[str, ...] = ("aspp", "bottlenecks", "ood_head")

    def __post_init__(self) -> None:
        if self.bn_mode not in BN_MODES:
            raise OodBenchError(f"bn_mode must be one of {', '.join(BN_MODES)}, got "
                                f"{self.bn_mode!r}")
        if self.stage1_steps < 1 or self.stage2_steps < 0 or self.batch_size < 1:
            raise OodBenchError("a CG-Aug recipe needs stage1_steps >= 1, stage2_steps >= 0 and "
                                f"batch_size >= 1, got {self.stage1_steps}, "
                                f"{self.stage2_steps}, {self.batch_size}")

    def with_total_steps(self, steps: int) -> CGAugRecipe:
        """The recipe shortened/lengthened to ``steps`` in all, split like its two stages."""
        from dataclasses import replace

        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise OodBenchError(f"steps must be a positive integer, got {steps!r}")
        total = self.stage1_steps + self.stage2_steps
        first = max(1, round(steps * self.stage1_steps / total))
        return replace(self, stage1_steps=first, stage2_steps=max(0, steps - first))


#: The paper's DeepLab recipe (``exps/DeepLab.yaml``): 9 + 40 epochs of 371 iterations (2975
#: Cityscapes pairs, batch 8 + 8, drop_last), 700×700 crops, no flip, Adam 1e-4 then 1e-6,
#: weight decay 1e-4, margins (10, 5, 5), β = (50, 10), selection 0.8, mixup ≤ 0.3, COCO
#: objects rescaled by 0.1–1.0.
REAL = CGAugRecipe(stage1_steps=9 * 371, stage2_steps=40 * 371, batch_size=8, crop=(700, 700),
                   flip=False)
#: The CPU recipe of the synthetic benchmark: whole 64×128 frames with flips, the synthetic
#: outlier family at its rendered size, and learning rates for a run of a few hundred steps
#: (1e-6 would not move a model in 200 steps).
SYNTHETIC = CGAugRecipe(stage1_steps=150, stage2_steps=150, batch_size=8, crop=None, flip=True,
                        stage1_lr=1e-3, stage2_lr=1e-4, outlier_scales=(1.0,))
RECIPES = {"real": REAL, "synthetic": SYNTHETIC}


# --- batches ------------------------------------------------------------------------------------


@dataclass
class PairedBatch:
    """One rank's pairs of a step (uint8 N×H×W×3 images, N×H×W labels): ``originals`` with the
    outlier object pasted, ``clean`` (the same crops, nothing pasted: the mixup source),
    ``generated`` and per-pair mixup weights ``mix`` (p of ``p·original + (1 − p)·gen``)."""

    originals: np.ndarray
    original_labels: np.ndarray
    clean: np.ndarray
    generated: np.ndarray
    generated_labels: np.ndarray
    mix: np.ndarray


def _crop_box(shape: tuple[int, int], crop: tuple[int, int] | None, rng: np.random.Generator):
    if crop is None:
        return (0, 0, *shape)
    height, width = crop
    y = int(rng.integers(max(shape[0] - height, 0) + 1))
    x = int(rng.integers(max(shape[1] - width, 0) + 1))
    return y, x, height, width


def _cut(array: np.ndarray, box: tuple[int, int, int, int], flip: bool,
         fill: int) -> np.ndarray:
    """``array`` cut to ``box`` (padded with ``fill`` past the border), mirrored if ``flip``."""
    y, x, height, width = box
    out = np.full((height, width, *array.shape[2:]), fill, array.dtype)
    part = array[y:y + height, x:x + width]
    out[:part.shape[0], :part.shape[1]] = part
    return np.ascontiguousarray(out[:, ::-1] if flip else out)


def training_labels(semantic: np.ndarray) -> np.ndarray:
    """trainIds kept, 254 kept (novel objects), everything else void."""
    keep = (semantic < NUM_CLASSES) | (semantic == OUTLIER_EXPOSURE)
    return np.where(keep, semantic, VOID).astype(np.uint8)


def paired_batch(pairs: Sequence, seed: int, step: int, batch_size: int, dist: Dist, *,
                 crop: tuple[int, int] | None, flip: bool, outliers: OutlierSource | None,
                 outlier_scales: Sequence[float], mixup_max: float) -> PairedBatch:
    """This rank's pairs of ``step`` (each from its own :func:`sample_rng`): identical crop and
    flip for both images of a pair, one outlier object pasted into the original (label 254),
    and the mixup weight ``min(U, mixup_max)``. The original's labels ≥ 19 are void before the
    paste; the generated labels keep 254 (its novel object)."""
    fields: dict[str, list[np.ndarray]] = {name: [] for name in PairedBatch.__dataclass_fields__}
    for position, index in frame_indices(seed, step, batch_size, len(pairs), dist):
        rng = sample_rng(seed, step, position)
        original, generated = pairs[index]
        if original.semantic is None or generated.semantic is None:
            raise OodBenchError(f"pair {original.name!r}/{generated.name!r} lacks labels")
        if original.image.shape != generated.image.shape:
            raise OodBenchError(f"generated image {generated.name!r} is "
                                f"{generated.image.shape[:2]}, its original {original.name!r} "
                                f"{original.image.shape[:2]}: pairs must be aligned")
        box = _crop_box(original.semantic.shape, crop, rng)
        mirrored = flip and bool(rng.random() < 0.5)
        image = _cut(np.asarray(original.image), box, mirrored, 0)
        label = _cut(np.where(original.semantic < NUM_CLASSES, original.semantic, VOID)
                     .astype(np.uint8), box, mirrored, VOID)
        fields["clean"].append(image)
        if outliers is not None:
            source = draw_outlier(outliers, outlier_scales, *label.shape, rng)
            image, label = paste_objects(image, label, source, rng)
        fields["originals"].append(image)
        fields["original_labels"].append(label)
        fields["generated"].append(_cut(np.asarray(generated.image), box, mirrored, 0))
        fields["generated_labels"].append(_cut(training_labels(generated.semantic), box,
                                               mirrored, VOID))
        fields["mix"].append(np.float32(min(rng.random(), mixup_max)))
    return PairedBatch(**{name: np.stack(values) for name, values in fields.items()})


def batch_tensors(batch: PairedBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2B normalised images (originals, then mixed-up generated) and their 2B labels."""
    originals = normalize_images(batch.originals, device)
    clean = normalize_images(batch.clean, device)
    generated = normalize_images(batch.generated, device)
    p = torch.as_tensor(batch.mix, device=device).view(-1, 1, 1, 1)
    images = torch.cat([originals, p * clean + (1 - p) * generated])
    labels = np.concatenate([batch.original_labels, batch.generated_labels]).astype(np.int64)
    return images, torch.as_tensor(labels, device=device)


# --- the model --------------------------------------------------------------------------------


def with_ood_head(model: nn.Module) -> nn.Module:
    """A copy of a DeepLabv3+ ``model`` with W° (``ood_head``) initialised from its classifier
    (a model that already has one keeps it)."""
    from ood_bench.models.deeplab import DeepLabV3Plus

    if not isinstance(model, DeepLabV3Plus):
        raise OodBenchError("CG-Aug's DeepLab training needs a DeepLabv3+ model, got "
                            f"{type(model).__name__}")
    tuned = copy.deepcopy(model)
    if tuned.ood_head is None:
        classifier = tuned.classifier
        tuned.ood_head = nn.Conv2d(classifier.in_channels, classifier.out_channels, 1,
                                   bias=False).to(classifier.weight.device)
        tuned.init_ood_head()
    return tuned


def stage_parts(recipe: CGAugRecipe, stage: int) -> tuple[str, ...]:
    """The ``param_groups`` names ``stage`` trains: W° alone, then ``recipe.stage2_parts``."""
    return ("ood_head",) if stage == 1 else recipe.stage2_parts


def stage_parameters(model: nn.Module, parts: Sequence[str]) -> list[nn.Parameter]:
    """The parameters of the ``param_groups`` named in ``parts``."""
    groups = model.param_groups()
    unknown = sorted(set(parts) - set(groups))
    if unknown:
        raise OodBenchError(f"unknown model parts {unknown}; the model has {sorted(groups)}")
    return [p for name in parts for p in groups[name]]


def part_modules(model: nn.Module, part: str) -> list[nn.Module]:
    """The modules of a DeepLabv3+ ``param_groups`` part."""
    modules = {"trunk": [getattr(model, name) for name in model.trunk_names],
               "aspp": [model.aspp], "bottlenecks": [model.bot_fine, model.bot_aspp],
               "head": [model.head], "classifier": [model.classifier],
               "ood_head": [model.ood_head]}
    return modules[part]


def set_stage_modes(model: nn.Module, parts: Sequence[str], bn_mode: str = "trained") -> None:
    """``bn_mode="trained"``: eval mode except the trained ``parts`` (so only their BatchNorm
    layers update); ``"all"``: train mode everywhere (the reference)."""
    model.train(bn_mode == "all")
    for part in parts if bn_mode == "trained" else ():
        for module in part_modules(model, part):
            module.train()


def cgaug_step(model: nn.Module, trainable: nn.Module, pairs: Sequence,
               outliers: OutlierSource | None, recipe: CGAugRecipe, stage: int, seed: int,
               step: int, dist: Dist, device: torch.device):
    """One step's loss and terms (``trainable``: ``model`` or its DDP wrapper)."""
    set_stage_modes(model, stage_parts(recipe, stage), recipe.bn_mode)
    batch = paired_batch(pairs, seed, step, recipe.batch_size, dist, crop=recipe.crop,
                         flip=recipe.flip, outliers=outliers,
                         outlier_scales=recipe.outlier_scales, mixup_max=recipe.mixup_max)
    images, labels = batch_tensors(batch, device)
    output = trainable(images, taps=("ood_score",))
    return noise_aware_loss(output.logits, output.taps["ood_score"], labels,
                            margins=recipe.margins, ce_weights=recipe.ce_weights,
                            selection_ratio=recipe.selection_ratio,
                            generator=step_generator(seed, step, dist.rank))


def train_two_stages(model: nn.Module, pairs: Sequence, outliers: OutlierSource | None,
                     recipe: CGAugRecipe, key: dict[str, Any], *, seed: int = 0,
                     device: torch.device | str = "cpu", dist: Dist | None = None,
                     progress: bool = False, checkpoint_every: int = 50, threads: int = 1,
                     on_step: Callable[[int], None] | None = None
                     ) -> tuple[nn.Module, list[str]]:
    """Train a copy of ``model`` (with W°) in two cached stages; returns it (eval mode, no
    gradients) and the two stages' cache keys. ``key`` identifies the model and the data."""
    dist = dist or Dist()
    device = torch.device(device)
    tuned = with_ood_head(model).to(device)
    keys: list[str] = []
    # Stage 2 continues stage 1's stream of batches (its step 0 is the data step stage1_steps).
    for stage, steps, lr, offset in ((1, recipe.stage1_steps, recipe.stage1_lr, 0),
                                     (2, recipe.stage2_steps, recipe.stage2_lr,
                                      recipe.stage1_steps)):
        if steps == 0:
            continue
        tuned.requires_grad_(False)
        trained = stage_parameters(tuned, stage_parts(recipe, stage))
        for parameter in trained:
            parameter.requires_grad_(True)
        optimizer = torch.optim.Adam(trained, lr=lr, weight_decay=recipe.weight_decay)
        settings = LoopSettings(steps, seed, checkpoint_every, threads, progress)
        run = TrainingRun(f"cgaug-stage{stage}",
                          {**key, "recipe": asdict(recipe), "stage": stage, "after": keys[-1:]},
                          tuned, optimizer, settings)

        def step_fn(trainable: nn.Module, step: int, stage: int = stage, lr: float = lr,
                    optimizer: torch.optim.Optimizer = optimizer, offset: int = offset):
            for group in optimizer.param_groups:  # constant lr (see the module docstring)
                group["lr"] = lr
            return cgaug_step(tuned, trainable, pairs, outliers, recipe, stage, seed,
                              offset + step, dist, device)

        run.run(step_fn, batch_images=2 * recipe.batch_size, dist=dist, on_step=on_step)
        keys.append(run.key)
    tuned.requires_grad_(False)
    return tuned.eval(), keys
