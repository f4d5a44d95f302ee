"""The ``cgaug`` method: CG-Aug data + two-stage noise-aware training, scored with u(x).

``fit(model, train_dataset)``:

* a model that already carries a trained uncertainty head (``ood_head``, e.g. the paper's
  ``DeepLab_best.pth`` loaded with ``ood_head=True``) is used as it is — nothing is trained
  (``retrain=True`` trains it further);
* otherwise the generated partners come from ``generated=<tree>`` (a Cityscapes-like tree from
  ``oodbench augment``, paired by the ``city_seq_frame`` prefix), or — on the synthetic
  benchmark — are generated with :class:`~ood_bench.cgaug.generators.SyntheticGenerator`
  into the cache (keyed by the generation config; ``max_frames`` limits the source frames to
  the first N), and the model is trained in two cached stages (:mod:`.training`).

Scores: the trained model's ``ood_score`` tap, ``−logsumexp(W° f(x))``. Segmentation: the trained
model's logits (stage 1 leaves them unchanged, stage 2 retrains the ASPP, so they change).

Models with ``family == "mask2former"`` are dispatched to ``cgaug/mask2former.py``
(``fit_mask2former``, ``score_mask2former``).

Registered variants (the Table 4 ablation on the synthetic world, see
:data:`~ood_bench.cgaug.generators.SYNTHETIC_MODES`): ``cgaug`` (coherent), ``cgaug-ss``,
``cgaug-ds``, ``cgaug-ds-or-ss`` and ``cgaug-incoherent``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ood_bench.adapters.base import Sample
from ood_bench.baselines.base import (
    Method,
    MethodOutput,
    eval_mode,
    model_fingerprint,
    register_method,
)
from ood_bench.baselines.outlier_exposure import (
    OutlierSource,
    default_outliers,
    outlier_identity,
)
from ood_bench.baselines.training import (
    check_positive_int,
    check_recipe_name,
    current_dist,
    dataset_identity,
    pick_recipe,
)
from ood_bench.errors import OodBenchError
from ood_bench.models.base import SegOutput

# ``training`` as a module: importing cgaug.training first loads ood_bench.baselines, which
# imports this module back while cgaug.training is still half-initialised.
from . import training
from .generators import SYNTHETIC_MODES
from .pairs import GeneratedTree, PairedFrames

#: Bump when the synthetic generation changes its output (keys the generated-data cache).
GENERATION_VERSION = 1
MASK2FORMER = "mask2former"


def has_ood_head(model: nn.Module) -> bool:
    """Whether ``model`` carries an uncertainty head W° (``ood_head``)."""
    return getattr(model, "ood_head", None) is not None


def tree_identity(tree: GeneratedTree) -> dict[str, Any]:
    """What determines a generated tree's pairs: its identity plus its manifest's digest."""
    manifest = tree.root / "manifest.jsonl"
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None
    return {**dataset_identity(tree), "manifest": digest}


def synthetic_pairs(train_dataset: Sequence, mode: str, frames: int | None, seed: int,
                    progress: bool, dist) -> tuple[PairedFrames, dict[str, Any]]:
    """CG-Aug partners of the first ``frames`` synthetic frames, generated once into the cache
    (rank 0 generates, the others wait); returns the pairs and the generation config."""
    from ood_bench.cache import cache_dir, config_hash
    from ood_bench.progress import progress_bar

    from .generators import SyntheticGenerator
    from .pipeline import generate_dataset
    from .sources import SyntheticObjects

    if not hasattr(train_dataset, "layout"):
        raise OodBenchError("CG-Aug on real data needs generated images: pass the fit option "
                            "generated=<tree written by oodbench augment>")
    count = len(train_dataset) if frames is None else min(frames, len(train_dataset))
    config = {"dataset": dataset_identity(train_dataset), "mode": mode, "frames": count,
              "seed": seed, "objects": "synthetic-outlier-exposure",
              "version": GENERATION_VERSION}
    out = cache_dir("cgaug", "generated", config_hash(config))
    if dist.is_main:
        with progress_bar(disable=not progress) as bar:
            task = bar.add_task(f"generate cgaug ({mode})", total=count, info="")
            generate_dataset(train_dataset, SyntheticGenerator(mode=mode), SyntheticObjects(),
                             out, limit=count, seed=seed, on_frame=lambda: bar.advance(task))
    dist.barrier()
    return PairedFrames(train_dataset, GeneratedTree(out), seed), config


@register_method("cgaug")
@register_method("cgaug-ss", mode="semantic")
@register_method("cgaug-ds", mode="domain")
@register_method("cgaug-ds-or-ss", mode="either")
@register_method("cgaug-incoherent", mode="incoherent")
class CGAug(Method):
    """Options: ``recipe`` ("auto", "real" = the paper's, "synthetic"), ``mode`` (the synthetic
    generator's variant), ``bn_mode`` (overrides the recipe's: "trained", or "all" = the
    reference's BatchNorm behaviour, see :mod:`.training`), ``outlier_root`` (COCO folder of
    the outlier paste on real data, see
    :class:`~ood_bench.baselines.outlier_exposure.CocoOutliers`), ``smoothing``."""

    name = "cgaug"
    requires_fit = True
    changes_segmentation = True

    def __init__(self, *, recipe: str = "auto", mode: str = "coherent",
                 bn_mode: str | None = None, outlier_root: str | None = None,
                 smoothing: bool = False) -> None:
        super().__init__(smoothing=smoothing)
        if mode not in SYNTHETIC_MODES:
            raise OodBenchError(f"mode must be one of {', '.join(SYNTHETIC_MODES)}, got {mode!r}")
        if bn_mode is not None and bn_mode not in training.BN_MODES:
            raise OodBenchError(f"bn_mode must be one of {', '.join(training.BN_MODES)}, got "
                                f"{bn_mode!r}")
        self.recipe_name = check_recipe_name(recipe, training.RECIPES)
        self.mode, self.bn_mode, self.outlier_root = mode, bn_mode, outlier_root
        self.model: nn.Module | None = None
        self.trained_key: str | None = None

    def config(self) -> dict[str, Any]:
        return {**super().config(), "recipe": self.recipe_name, "mode": self.mode,
                "bn_mode": self.bn_mode, "trained": self.trained_key}

    @classmethod
    def needs_training_data(cls, model: nn.Module, fit_options: dict[str, Any]) -> bool:
        return bool(fit_options.get("retrain")) or not has_ood_head(model)

    def fit(self, model: nn.Module, train_dataset: Sequence, *, device: str | torch.device = "cpu",
            seed: int = 0, steps: int | None = None, max_frames: int | None = None,
            generated: str | Path | Sequence[Sample] | None = None,
            generated_split: str = "train",
            outliers: OutlierSource | None = None, retrain: bool = False,
            progress: bool = False, checkpoint_every: int = 50, threads: int = 1,
            distributed: bool = False, on_step=None) -> None:
        """Train CG-Aug on ``train_dataset`` paired with its generated partners (or take a
        model's trained ``ood_head`` as it is; see the module docstring).

        ``steps`` overrides the recipe's total length (split between the stages like the
        recipe); ``max_frames`` uses the first N source frames; ``generated`` is the generated
        tree (real data) or an in-memory sequence of generated samples (named like their
        originals); ``outliers`` overrides the outlier-exposure source.
        """
        if has_ood_head(model) and not retrain:
            self.model, self.trained_key = model, f"given:{model_fingerprint(model)[:16]}"
            return
        if len(train_dataset) == 0:
            raise OodBenchError("the training set is empty")
        if max_frames is not None:
            check_positive_int("max_frames", max_frames)
        dist = current_dist(device, joint=distributed)
        if isinstance(generated, str | Path):
            tree = GeneratedTree(generated, generated_split)
            pairs, data_key = PairedFrames(train_dataset, tree, seed), tree_identity(tree)
        elif generated is not None:
            pairs = PairedFrames(train_dataset, generated, seed)
            data_key = dataset_identity(generated)
        else:
            pairs, data_key = synthetic_pairs(train_dataset, self.mode, max_frames, seed,
                                              progress, dist)
        if max_frames is not None:
            pairs.pairs = pairs.pairs[:max_frames]
        recipe = pick_recipe(self.recipe_name, train_dataset, training.RECIPES)
        if steps is not None:
            recipe = recipe.with_total_steps(steps)
        if self.bn_mode is not None:
            recipe = dataclasses.replace(recipe, bn_mode=self.bn_mode)
        if outliers is None:
            outliers = default_outliers(train_dataset, self.outlier_root)
        options = dict(device=device, seed=seed, progress=progress,
                       checkpoint_every=checkpoint_every, threads=threads, on_step=on_step)
        if getattr(model, "family", None) == MASK2FORMER:
            from .mask2former import fit_mask2former

            fit_mask2former(self, model, pairs, recipe=recipe, steps=steps, outliers=outliers,
                            distributed=distributed, **options)
            return
        key = {"model": model_fingerprint(model), "pairs": {"data": data_key, "count": len(pairs)},
               "outliers": outlier_identity(outliers)}
        tuned, keys = training.train_two_stages(model, pairs, outliers, recipe, key, dist=dist,
                                       **options)
        self.model, self.trained_key = tuned, keys[-1]

    def _trained(self) -> nn.Module:
        if self.model is None:
            raise OodBenchError(f"method {self.name!r} is not fitted: call fit(model, dataset)")
        return self.model

    def score(self, model: nn.Module, images: torch.Tensor) -> MethodOutput:
        trained = self._trained()
        if getattr(trained, "family", None) != MASK2FORMER:
            return super().score(model, images)
        from .mask2former import score_mask2former

        with torch.inference_mode(), eval_mode(trained):
            scores, prediction = score_mask2former(trained.to(images.device), images)
            return MethodOutput(self.postprocess(scores.float()), prediction)

    def forward_model(self, model: nn.Module, images: torch.Tensor) -> SegOutput:
        trained = self._trained().to(images.device)
        if not has_ood_head(trained):
            raise OodBenchError("the cgaug model has no ood_head to score with")
        with eval_mode(trained):
            return trained(images, taps=("ood_score",))

    def score_output(self, output: SegOutput) -> torch.Tensor:
        return output.taps["ood_score"]
