"""The Mask2Former set criterion: semantic targets, Hungarian matching and point-sampled losses.

A Mask2Former predicts Q (class, mask) pairs. Training matches them one-to-one to the image's
targets — one binary mask per trainId present — with the Hungarian algorithm on the cost
``class_weight·(−p_q(c_k)) + mask_weight·BCE(m_q, t_k) + dice_weight·dice(m_q, t_k)``, then
applies a cross-entropy to every query's class (unmatched queries → the no-object class, down-
weighted by ``no_object_weight``) and a sigmoid BCE + dice loss to each matched mask, all
evaluated on sampled points instead of every pixel (Cheng et al. 2022). With deep supervision
the same losses (with their own matching) apply to every earlier decoder layer.

Conventions of this implementation:

* Void pixels (label 255, and every value ≥ 19 other than 254) are **ignored** by the mask
  losses and the matching cost: a sampled point on a void pixel has weight 0. Outlier-exposure
  pixels (254) are ignored as well, or — ``outliers="background"`` — count as a region where
  every class mask is 0 (Mask2Anomaly removes pasted objects from the class masks this way).
* Points are uniform random in the image (``sampling="uniform"``) or Mask2Former's importance
  sampling of uncertain points (``"importance"``), drawn from a ``torch.Generator`` so a seeded
  criterion gives the same losses every time. Coordinates are (x, y) in [0, 1]; predictions are
  sampled bilinearly at their own (1/4) resolution, targets bilinearly at full resolution.
* :func:`select_low_loss_points` is CG-Aug's "clean" sampling for generated images: of
  ``oversample·P`` random points keep the ``keep·P`` with the lowest BCE, fill up with random
  ones. ``SetCriterion(..., point_selection=flags)`` uses it for the flagged images.
* Mask losses are summed over matched masks and divided by the number of target masks in the
  batch; the class loss is the no-object-weighted mean cross-entropy (as Mask2Former).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ood_bench.errors import OodBenchError

NUM_CLASSES = 19
OUTLIER_LABEL = 254
#: Mask2Former's number of sampled points per mask (112 × 112).
DEFAULT_POINTS = 12544

Outliers = Literal["ignore", "background"]
Sampling = Literal["uniform", "importance"]


@dataclass
class SemanticTarget:
    """One image's set-prediction target: a mask per present trainId and the counted pixels.

    ``labels``: K ascending trainIds (int64); ``masks``: K×H×W bool; ``valid``: H×W bool, the
    pixels the mask losses count (False on void and, unless counted, outlier pixels).
    """

    labels: Tensor
    masks: Tensor
    valid: Tensor

    def to(self, device: torch.device | str) -> SemanticTarget:
        return SemanticTarget(self.labels.to(device), self.masks.to(device), self.valid.to(device))


def semantic_targets(
    labels: Tensor | np.ndarray, *, outliers: Outliers = "ignore", num_classes: int = NUM_CLASSES
) -> list[SemanticTarget]:
    """Per-image targets from an N×H×W trainId label map (one target per present class)."""
    labels = torch.as_tensor(labels)
    if labels.ndim != 3 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise OodBenchError(
            f"labels must be an integer N×H×W trainId map, got {labels.dtype} of shape "
            f"{tuple(labels.shape)}"
        )
    if outliers not in ("ignore", "background"):
        raise OodBenchError(f"outliers must be 'ignore' or 'background', got {outliers!r}")
    labels = labels.long()
    targets = []
    for image in labels:
        valid = image < num_classes
        present = torch.unique(image[valid])
        if outliers == "background":
            valid = valid | (image == OUTLIER_LABEL)
        masks = image[None] == present[:, None, None]
        targets.append(SemanticTarget(present, masks, valid))
    return targets


# --------------------------------------------------------------------------- point sampling


def point_sample(maps: Tensor, coords: Tensor, mode: str = "bilinear") -> Tensor:
    """Values of M×h×w ``maps`` at M×P×2 (x, y) ``coords`` in [0, 1] → M×P.

    Pixel i covers [i/h, (i+1)/h): a point at a pixel centre reads that pixel exactly; outside
    the outermost centres the border value is repeated (no fading towards zero at the edge).
    """
    grid = 2.0 * coords[:, None].to(maps.dtype) - 1.0
    return F.grid_sample(maps[:, None], grid, mode=mode, padding_mode="border",
                         align_corners=False)[:, 0, 0]


def random_points(
    count: int, num_points: int, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """``count``×``num_points``×2 uniform random (x, y) coordinates in [0, 1)."""
    return torch.rand(count, num_points, 2, generator=generator).to(device)


def uncertain_points(
    mask_logits: Tensor, num_points: int, *, oversample: float = 3.0, importance: float = 0.75,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mask2Former's importance sampling: of ``oversample·P`` random points per mask keep the
    ``importance·P`` with the least confident logit (smallest |m|), fill up with random ones."""
    count = mask_logits.shape[0]
    drawn = random_points(count, max(int(oversample * num_points), 1), generator,
                          mask_logits.device)
    n_uncertain = int(importance * num_points)
    with torch.no_grad():
        uncertainty = -point_sample(mask_logits.detach(), drawn).abs()
    chosen = uncertainty.topk(n_uncertain, dim=1).indices
    kept = torch.gather(drawn, 1, chosen[..., None].expand(-1, -1, 2))
    extra = random_points(count, num_points - n_uncertain, generator, mask_logits.device)
    return torch.cat([kept, extra], dim=1)


def select_low_loss_points(
    mask_logits: Tensor, target_masks: Tensor, num_points: int, *, valid: Tensor | None = None,
    oversample: float = 1.25, keep: float = 0.95, generator: torch.Generator | None = None,
) -> Tensor:
    """CG-Aug's clean point sampling for generated images → M×P×2 coordinates.

    Per mask, draws ``round(oversample·P)`` random points, keeps the ``round(keep·P)`` with the
    lowest sigmoid BCE between ``mask_logits`` (M×h×w) and ``target_masks`` (M×H×W, bool or
    float) and adds ``P − round(keep·P)`` fresh random points. Points on pixels where ``valid``
    (M×H×W or H×W, bool) is False rank last. Ranking is done without gradients.
    """
    if not 0.0 <= keep <= 1.0 or oversample < keep:
        raise OodBenchError(f"need 0 ≤ keep ≤ 1 and oversample ≥ keep, got keep={keep}, "
                            f"oversample={oversample}")
    count, device = mask_logits.shape[0], mask_logits.device
    drawn = random_points(count, max(round(oversample * num_points), 1), generator, device)
    n_keep = min(round(keep * num_points), drawn.shape[1])
    with torch.no_grad():
        logits = point_sample(mask_logits.detach().float(), drawn)
        targets = point_sample(target_masks.float(), drawn)
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        if valid is not None:
            weights = point_sample(valid.float().expand_as(target_masks), drawn, mode="nearest")
            loss = loss.masked_fill(weights < 0.5, float("inf"))
        chosen = loss.topk(n_keep, dim=1, largest=False).indices
    kept = torch.gather(drawn, 1, chosen[..., None].expand(-1, -1, 2))
    extra = random_points(count, num_points - n_keep, generator, device)
    return torch.cat([kept, extra], dim=1)


# --------------------------------------------------------------------------- losses and costs


def mask_bce(logits: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
    """Per-mask sigmoid BCE of M×P point logits vs targets: Σ w·bce / Σ w (w = 1 by default)."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if weights is None:
        return loss.mean(1)
    return (loss * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def mask_dice(logits: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
    """Per-mask dice loss 1 − (2Σ w·σ·t + 1) / (Σ w·σ + Σ w·t + 1) of M×P point logits."""
    probs = logits.sigmoid()
    if weights is not None:
        probs, targets = probs * weights, targets * weights
    numerator = 2 * (probs * targets).sum(1) + 1
    return 1 - numerator / (probs.sum(1) + targets.sum(1) + 1)


def pairwise_mask_costs(
    logits: Tensor, targets: Tensor, weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """BCE and dice cost of every prediction (…×Q×P logits) vs every target (…×K×P) → two
    …×Q×K (leading dimensions: a batch of images).

    Entry (q, k) equals ``mask_bce``/``mask_dice`` of prediction q vs target k, computed for all
    pairs at once; ``weights`` (…×P) weighs the points (shared by all pairs of an image).
    """
    weights = torch.ones_like(logits[..., 0, :]) if weights is None else weights
    weights = weights[..., None, :]
    # BCE(x, t) = softplus(x) − t·x: one softplus for all pairs
    bce = (F.softplus(logits) * weights).sum(-1, keepdim=True) - (logits * weights) @ \
        targets.transpose(-1, -2)
    bce = bce / weights.sum(-1, keepdim=True).clamp(min=1.0)
    probs, weighted_targets = logits.sigmoid() * weights, targets * weights
    numerator = 2 * probs @ weighted_targets.transpose(-1, -2) + 1
    denominator = probs.sum(-1)[..., :, None] + weighted_targets.sum(-1)[..., None, :] + 1
    return bce, 1 - numerator / denominator


Match = tuple[Tensor, Tensor]


@torch.no_grad()
def hungarian_match(
    class_logits: Tensor,
    mask_logits: Tensor,
    targets: Sequence[SemanticTarget],
    *,
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
    num_points: int = DEFAULT_POINTS,
    generator: torch.Generator | None = None,
    batch: TargetBatch | None = None,
) -> list[Match]:
    """One-to-one query↔target assignment per image minimising the weighted matching cost.

    ``class_logits``: N×Q×(C+1); ``mask_logits``: N×Q×h×w. Returns per image (query indices,
    target indices), int64, sorted by query. The mask costs use ``num_points`` uniform random
    points per image, the same for every query and target (as Mask2Former). ``batch``: the
    targets already padded (:meth:`TargetBatch.of`), to share between decoder layers.
    """
    _check_outputs(class_logits, mask_logits, targets)
    empty = torch.empty(0, dtype=torch.long)
    matches: list[Match] = [(empty, empty)] * len(targets)
    batch = batch or TargetBatch.of(targets, mask_logits.device)
    if batch is None:
        return matches
    coords = random_points(len(batch.images), num_points, generator, mask_logits.device)
    grid = 2.0 * coords[:, None] - 1.0
    chosen = torch.as_tensor(batch.images, device=mask_logits.device)
    predicted = _sample_batch(mask_logits[chosen].float(), grid)
    wanted = _sample_batch(batch.masks, grid)
    weights = _sample_batch(batch.valid[:, None], grid, mode="nearest")[:, 0]
    cost_bce, cost_dice = pairwise_mask_costs(predicted, wanted, weights)
    probs = class_logits[chosen].float().softmax(-1)
    cost_class = -torch.gather(probs, 2, batch.labels[:, None].expand(-1, probs.shape[1], -1))
    cost = (class_weight * cost_class + mask_weight * cost_bce + dice_weight * cost_dice)
    cost = cost.cpu().double().numpy()
    for row, (image, size) in enumerate(zip(batch.images, batch.sizes, strict=True)):
        rows, columns = linear_sum_assignment(cost[row, :, :size])
        matches[image] = (torch.as_tensor(rows, dtype=torch.long),
                          torch.as_tensor(columns, dtype=torch.long))
    return matches


@dataclass
class TargetBatch:
    """A batch's targets as padded tensors, built once and shared by every decoder layer.

    ``images``: the images with at least one target; row r of ``labels`` (R×K, padded with 0),
    ``masks`` (R×K×H×W float, padded with empty masks) and ``valid`` (R×H×W float) belongs to
    image ``images[r]``, which has ``sizes[r]`` targets.
    """

    images: list[int]
    sizes: list[int]
    labels: Tensor
    masks: Tensor
    valid: Tensor

    @classmethod
    def of(cls, targets: Sequence[SemanticTarget], device: torch.device) -> TargetBatch | None:
        """The padded batch, or None when no image has a target."""
        images = [i for i, target in enumerate(targets) if target.labels.numel()]
        if not images:
            return None
        sizes = [len(targets[i].labels) for i in images]
        labels = torch.zeros(len(images), max(sizes), dtype=torch.long, device=device)
        masks = torch.zeros(len(images), max(sizes), *targets[images[0]].masks.shape[1:],
                            device=device)
        for row, (image, size) in enumerate(zip(images, sizes, strict=True)):
            labels[row, :size] = targets[image].labels
            masks[row, :size] = targets[image].masks
        valid = torch.stack([targets[i].valid for i in images]).float().to(device)
        return cls(images, sizes, labels, masks, valid)


def _sample_batch(maps: Tensor, grid: Tensor, mode: str = "bilinear") -> Tensor:
    """Values of N×C×h×w ``maps`` at N×1×P×2 grid coordinates in [-1, 1] → N×C×P (the
    sampling convention of :func:`point_sample`)."""
    return F.grid_sample(maps, grid.to(maps.dtype), mode=mode, padding_mode="border",
                         align_corners=False)[:, :, 0]


def classification_loss(
    class_logits: Tensor, matches: Sequence[Match], targets: Sequence[SemanticTarget],
    no_object_weight: float = 0.1,
) -> Tensor:
    """Cross-entropy over all N×Q queries: matched → their target's class, others → no-object
    (the last class, weight ``no_object_weight``); the weighted mean as ``F.cross_entropy``."""
    n_classes = class_logits.shape[-1]
    wanted = torch.full(class_logits.shape[:2], n_classes - 1, dtype=torch.long,
                        device=class_logits.device)
    for image, ((queries, indices), target) in enumerate(zip(matches, targets, strict=True)):
        wanted[image, queries.to(wanted.device)] = target.labels.to(wanted.device)[indices]
    class_weights = torch.ones(n_classes, device=class_logits.device)
    class_weights[-1] = no_object_weight
    return F.cross_entropy(class_logits.transpose(1, 2).float(), wanted, weight=class_weights)


def _check_outputs(class_logits: Tensor, mask_logits: Tensor,
                   targets: Sequence[SemanticTarget]) -> None:
    if class_logits.ndim != 3 or mask_logits.ndim != 4:
        raise OodBenchError(
            f"expected class_logits N×Q×(C+1) and mask_logits N×Q×h×w, got shapes "
            f"{tuple(class_logits.shape)} and {tuple(mask_logits.shape)}"
        )
    if class_logits.shape[:2] != mask_logits.shape[:2] or len(targets) != len(class_logits):
        raise OodBenchError(
            f"class_logits {tuple(class_logits.shape)}, mask_logits {tuple(mask_logits.shape)} "
            f"and {len(targets)} targets disagree on the batch size or the number of queries"
        )


# --------------------------------------------------------------------------- the criterion


class SetCriterion:
    """Mask2Former's training loss: matching + class CE + point-sampled mask BCE and dice.

    ``__call__(outputs, targets, point_selection=None, generator=None)`` returns ``(total,
    terms)``: ``terms`` holds the unweighted ``loss_ce``, ``loss_mask``, ``loss_dice`` of the
    final layer and ``loss_ce_<i>``… of decoder layer i (deep supervision), ``total`` their sum
    weighted by ``class_weight``/``mask_weight``/``dice_weight``. ``outputs`` is a model's
    ``SegOutput`` (its taps) or a dict with ``class_logits``, ``mask_logits`` and, for deep
    supervision, ``aux_class_logits``/``aux_mask_logits`` stacked over the earlier layers.
    ``targets`` is an N×H×W trainId label map or :func:`semantic_targets`' list.
    ``point_selection`` flags (N bools) the images whose mask losses use
    :func:`select_low_loss_points` (CG-Aug's generated images); the others use ``sampling``.
    Points come from ``generator`` or the criterion's own, seeded with ``seed``.

    Defaults are Mask2Anomaly's (class 2, mask 5, dice 5); CG-Aug's Mask2Former stage 2 uses
    class 5, mask 10, dice 10 and ``deep_supervision=False``.
    """

    def __init__(
        self,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = DEFAULT_POINTS,
        deep_supervision: bool = True,
        sampling: Sampling = "uniform",
        oversample: float = 3.0,
        importance: float = 0.75,
        outliers: Outliers = "ignore",
        seed: int = 0,
    ) -> None:
        if sampling not in ("uniform", "importance"):
            raise OodBenchError(f"sampling must be 'uniform' or 'importance', got {sampling!r}")
        if num_points < 1:
            raise OodBenchError(f"num_points must be >= 1, got {num_points}")
        self.weights = {"loss_ce": class_weight, "loss_mask": mask_weight,
                        "loss_dice": dice_weight}
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.deep_supervision = deep_supervision
        self.sampling = sampling
        self.oversample = oversample
        self.importance = importance
        self.outliers = outliers
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(
        self,
        outputs: Any,
        targets: Tensor | np.ndarray | Sequence[SemanticTarget],
        point_selection: Tensor | Sequence[bool] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        taps = outputs.taps if hasattr(outputs, "taps") else outputs
        if not isinstance(targets, Sequence):
            targets = semantic_targets(targets, outliers=self.outliers)
        generator = generator or self.generator
        layers = [("", taps["class_logits"], taps["mask_logits"])]
        if self.deep_supervision:
            if "aux_class_logits" not in taps or "aux_mask_logits" not in taps:
                raise OodBenchError("deep supervision needs the outputs 'aux_class_logits' and "
                                    "'aux_mask_logits' (or SetCriterion(deep_supervision=False))")
            layers += [(f"_{i}", c, m) for i, (c, m) in
                       enumerate(zip(taps["aux_class_logits"], taps["aux_mask_logits"],
                                     strict=True))]
        selected = self._selection(point_selection, len(targets))
        device = taps["mask_logits"].device
        targets = [target.to(device) for target in targets]
        batch = TargetBatch.of(targets, device)
        terms: dict[str, Tensor] = {}
        total = taps["mask_logits"].new_zeros(())
        for suffix, class_logits, mask_logits in layers:
            layer = self.layer_losses(class_logits, mask_logits, targets, selected, generator,
                                      batch)
            for kind, value in layer.items():
                terms[f"{kind}{suffix}"] = value
                total = total + self.weights[kind] * value
        return total, terms

    @staticmethod
    def _selection(flags: Tensor | Sequence[bool] | None, count: int) -> Tensor:
        if flags is None:
            return torch.zeros(count, dtype=torch.bool)
        flags = torch.as_tensor(flags, dtype=torch.bool).cpu()
        if flags.shape != (count,):
            raise OodBenchError(f"point_selection needs one flag per image ({count}), got "
                                f"shape {tuple(flags.shape)}")
        return flags

    def layer_losses(
        self, class_logits: Tensor, mask_logits: Tensor, targets: Sequence[SemanticTarget],
        selected: Tensor, generator: torch.Generator, batch: TargetBatch | None,
    ) -> dict[str, Tensor]:
        """Unweighted ``loss_ce``, ``loss_mask``, ``loss_dice`` of one decoder layer."""
        matches = hungarian_match(
            class_logits, mask_logits, targets, class_weight=self.weights["loss_ce"],
            mask_weight=self.weights["loss_mask"], dice_weight=self.weights["loss_dice"],
            num_points=self.num_points, generator=generator, batch=batch,
        )
        losses = {"loss_ce": classification_loss(class_logits, matches, targets,
                                                 self.no_object_weight)}
        num_masks = max(sum(len(t.labels) for t in targets), 1)
        # every matched mask of the batch at once: flagged images' masks, then the others
        groups = {True: [], False: []}
        for row, image in enumerate(batch.images if batch is not None else []):
            queries, indices = matches[image]
            groups[bool(selected[image])].append((image, row, queries, indices))
        bce, dice = [], []
        device = mask_logits.device

        def per_mask(group: list, position: int) -> Tensor:  # image or row of each mask
            return torch.cat([torch.full((len(item[2]),), item[position], dtype=torch.long)
                              for item in group]).to(device)

        for clean, group in groups.items():
            if not group:
                continue
            rows = per_mask(group, 1)
            predicted = mask_logits[per_mask(group, 0),
                                    torch.cat([item[2] for item in group]).to(device)].float()
            wanted = batch.masks[rows, torch.cat([item[3] for item in group]).to(device)]
            valid = batch.valid[rows]
            coords = self._points(predicted, wanted, valid, clean, generator)
            logits = point_sample(predicted, coords)
            points_target = point_sample(wanted, coords)
            weights = point_sample(valid, coords, mode="nearest")
            bce.append(mask_bce(logits, points_target, weights))
            dice.append(mask_dice(logits, points_target, weights))
        if bce:
            losses["loss_mask"] = torch.cat(bce).sum() / num_masks
            losses["loss_dice"] = torch.cat(dice).sum() / num_masks
        else:  # no target anywhere: zero mask losses that still belong to the graph
            losses["loss_mask"] = losses["loss_dice"] = mask_logits.sum() * 0.0
        return losses

    def _points(self, predicted: Tensor, wanted: Tensor, valid: Tensor, clean: bool,
                generator: torch.Generator) -> Tensor:
        if clean:
            return select_low_loss_points(predicted, wanted, self.num_points, valid=valid,
                                          generator=generator)
        if self.sampling == "importance":
            return uncertain_points(predicted, self.num_points, oversample=self.oversample,
                                    importance=self.importance, generator=generator)
        return random_points(len(predicted), self.num_points, generator, predicted.device)
