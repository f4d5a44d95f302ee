"""RPL + CoroCL: Residual Pattern Learning (Liu et al., ICCV 2023; ``yyliu01/RPL``).

The segmenter stays frozen (eval mode, BatchNorm statistics fixed). A residual block reads the
trunk output (``"trunk"`` tap, 1/8 resolution): its own ASPP (the model's design and rates), a
bias-free 1×1 bottleneck, bilinear upsampling to the decoder-input resolution and a bias-free 1×1
projection to the decoder-input width, whose output ``res`` is *added to the decoder input*
``dec0``; the frozen head and classifier then give the residual logits
``f = up(classifier(head(dec0 + res)))``. The vanilla logits ``g`` (the frozen model's own) give
the segmentation, so RPL never changes the prediction or the mIoU. As in the paper's code the new
convolutions are Kaiming-initialised (not zero), so the residual changes the logits from the
start; only the anomaly score reads them.

Losses per step (``research/baselines.md`` §5.2), with y the label after outlier-exposure pasting
(254 = pasted object, 255 = void) and "inlier" = y ∉ {254, 255}:

* ``CE(f, argmax g)`` over inlier pixels (the frozen model's prediction, not the ground truth);
* MSE between the softmax entropies ``H(f)`` and ``H(g)`` (probabilities clamped at 1e-7);
* positive energy: mean over 254-pixels of ``max(0, logsumexp f)``, weight 0.05;
* CoroCL: supervised InfoNCE (τ = 0.1) on L2-normalised projections (a 1×1 conv on the
  upsampled residual feature) of n = min(512, group sizes) sampled pixels from each of city
  anomaly / city inlier (anchors) and OoD-context anomaly / inlier, where the OoD-context images
  are the rescaled outlier-source images passed through the network in the same batch.

The inlier and energy losses are taken on the pasted training frames; CoroCL on both halves.
Score: the energy ``−logsumexp f`` (optionally 7×7 σ = 1 smoothed, as the paper).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ood_bench.adapters.base import OUTLIER_EXPOSURE
from ood_bench.errors import OodBenchError
from ood_bench.models.base import SegOutput
from ood_bench.models.deeplab import ASPP, DeepLabV3Plus, init_decoder_weights, upsample
from ood_bench.models.inference import normalize_images

from .base import Method, model_fingerprint, register_method
from .outlier_exposure import (
    OutlierRecipe,
    OutlierSource,
    default_outliers,
    inlier_mask,
    outlier_identity,
)
from .posthoc import energy_score
from .training import (
    LoopSettings,
    TrainingRun,
    check_positive_int,
    check_recipe_name,
    current_dist,
    dataset_identity,
    frozen,
    pick_recipe,
    step_generator,
    training_batch,
)


@dataclass(frozen=True)
class RPLRecipe(OutlierRecipe):
    """What RPL training learns from: schedule, crop, outlier exposure and loss weights."""

    residual_lr_factor: float = 10.0
    energy_weight: float = 0.05
    corocl_weight: float = 1.0
    temperature: float = 0.1
    max_samples: int = 512


#: The paper's recipe (``rpl_corocl.code/config/config.py``): 40 epochs × 371 iterations, batch 8
#: (plus 8 OoD-context images), 700×700 crops with mirroring, Adam lr 7.5e-5 (10× on the
#: residual projection), poly 0.9, no weight decay, COCO scales 0.1–0.75.
PUBLISHED = RPLRecipe(steps=40 * 371, batch_size=8, crop=(700, 700), lr=7.5e-5)
#: The CPU recipe of the synthetic benchmark: whole 64×128 frames, the synthetic outlier family
#: at its rendered (perspective) size, a few hundred steps at a learning rate for a short run.
SYNTHETIC = RPLRecipe(steps=300, batch_size=8, crop=None, lr=1e-3, outlier_scales=(1.0,))
RECIPES = {"real": PUBLISHED, "synthetic": SYNTHETIC}


# --- losses ------------------------------------------------------------------------------------


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """N×C×H×W → N×H×W ``−Σ p log p`` with p clamped at 1e-7 (RPL's entropy)."""
    p = logits.softmax(1).clamp(min=1e-7)
    return -(p * p.log()).sum(1)


def inlier_losses(residual_logits: torch.Tensor, vanilla_logits: torch.Tensor,
                  label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE to the frozen model's argmax, MSE of entropies), averaged over inlier pixels."""
    inlier = inlier_mask(label)
    pseudo = vanilla_logits.argmax(1)
    ce = F.cross_entropy(residual_logits, pseudo, reduction="none")
    mse = (softmax_entropy(residual_logits) - softmax_entropy(vanilla_logits)).square()
    if not inlier.any():
        zero = residual_logits.sum() * 0
        return zero, zero
    return ce[inlier].mean(), mse[inlier].mean()


def positive_energy_loss(residual_logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean over outlier pixels (label 254) of ``max(0, logsumexp f)`` = ``max(0, −energy)``."""
    outlier = label == OUTLIER_EXPOSURE
    if not outlier.any():
        return residual_logits.sum() * 0
    return F.relu(torch.logsumexp(residual_logits, 1)[outlier]).mean()


def corocl_loss(anchors: torch.Tensor, anchor_labels: torch.Tensor, others: torch.Tensor,
                other_labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised InfoNCE of CoroCL over L2-normalised embeddings (rows).

    The contrast set is ``anchors`` followed by ``others``. For anchor i, with
    ``s_ij = z_i·z_j / τ`` (row maximum subtracted), positives P(i) = contrast samples with i's
    label except i itself, negatives N(i) = samples with the other label:
    ``loss = −mean_i mean_{p∈P(i)} log(exp s_ip / (exp s_ip + Σ_{n∈N(i)} exp s_in))``.
    """
    contrast = torch.cat([anchors, others])
    labels = torch.cat([anchor_labels, other_labels])
    logits = anchors @ contrast.T / temperature
    logits = logits - logits.max(1, keepdim=True).values.detach()
    same = anchor_labels[:, None] == labels[None, :]
    positives = same.clone()
    own = torch.arange(len(anchors), device=anchors.device)
    positives[own, own] = False
    exp = logits.exp()
    negative_sum = (exp * ~same).sum(1, keepdim=True)
    log_prob = logits - torch.log(exp + negative_sum)
    per_anchor = (log_prob * positives).sum(1) / positives.sum(1).clamp(min=1)
    return -per_anchor.mean()


def sample_contrast_pixels(projections: torch.Tensor, labels: torch.Tensor, frames: int,
                           max_samples: int, generator: torch.Generator):
    """Sample CoroCL embeddings from N×D×h×w ``projections`` of ``frames`` pasted frames
    followed by their OoD-context images, with N×H×W labels (254 anomaly; 255 ignored).

    Returns ``(anchors, anchor_labels, others, other_labels)`` (labels 1 = anomaly) with n
    samples per group, n = min(``max_samples``, each group's size); None when a group is empty.
    """
    small = F.interpolate(labels[:, None].float(), size=projections.shape[-2:],
                          mode="nearest")[:, 0].long()
    z = F.normalize(projections, dim=1).permute(0, 2, 3, 1)
    halves = ((z[:frames], small[:frames]), (z[frames:], small[frames:]))
    groups = []
    for embeddings, label in halves:
        groups.append(embeddings[label == OUTLIER_EXPOSURE])
        groups.append(embeddings[inlier_mask(label)])
    n = min(max_samples, *(len(g) for g in groups))
    if n == 0:
        return None
    picked = [g[torch.randperm(len(g), generator=generator)[:n].to(g.device)] for g in groups]
    binary = torch.cat([torch.ones(n), torch.zeros(n)]).to(z.device)
    return torch.cat(picked[:2]), binary, torch.cat(picked[2:]), binary.clone()


# --- the residual block --------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """RPL's trainable block: ASPP on the trunk, 1×1 bottleneck, upsampling, 1×1 residual to the
    decoder-input width, and CoroCL's 1×1 projection head on the same upsampled feature."""

    def __init__(self, trunk_channels: int, aspp_channels: int, rates: Sequence[int],
                 decoder_channels: int) -> None:
        super().__init__()
        self.aspp = ASPP(trunk_channels, aspp_channels, rates)
        self.bottleneck = nn.Conv2d(self.aspp.out_channels, aspp_channels, 1, bias=False)
        self.residual = nn.Conv2d(aspp_channels, decoder_channels, 1, bias=False)
        self.projection = nn.Conv2d(aspp_channels, decoder_channels, 1)
        for module in (self.aspp, self.bottleneck, self.residual):
            init_decoder_weights(module)

    @classmethod
    def for_model(cls, model: nn.Module) -> ResidualBlock:
        """A block matching a DeepLabv3+ model's trunk, ASPP and decoder-input widths."""
        if not isinstance(model, DeepLabV3Plus):
            raise OodBenchError("RPL needs a DeepLabv3+ model (one with 'trunk' and "
                                f"'decoder_input' taps), got {type(model).__name__}")
        rates = [branch[0].dilation[0] for branch in model.aspp.features[1:]]
        return cls(model.aspp.img_conv[0].in_channels, model.bot_aspp.out_channels, rates,
                   model.head[0].in_channels)

    def forward(self, trunk: torch.Tensor, size: Sequence[int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(residual, projection) at ``size`` (the decoder-input resolution)."""
        hidden = upsample(self.bottleneck(self.aspp(trunk)), size).to(trunk.dtype)
        return self.residual(hidden), self.projection(hidden)


def residual_logits(model: nn.Module, decoder_input: torch.Tensor, residual: torch.Tensor,
                    size: Sequence[int]) -> torch.Tensor:
    """The frozen head and classifier on ``decoder_input + residual``, upsampled to ``size``."""
    return upsample(model.classifier(model.head(decoder_input + residual)), size)


# --- the method ---------------------------------------------------------------------------


@register_method("rpl")
class RPL(Method):
    """Options: ``recipe`` ("auto", "real" = the published recipe, "synthetic"),
    ``outlier_root`` (COCO folder for real data, see
    :class:`~ood_bench.baselines.outlier_exposure.CocoOutliers`), ``smoothing``."""

    name = "rpl"
    requires_fit = True

    def __init__(self, *, recipe: str = "auto", outlier_root: str | None = None,
                 smoothing: bool = False) -> None:
        super().__init__(smoothing=smoothing)
        check_recipe_name(recipe, RECIPES)
        self.recipe_name, self.outlier_root = recipe, outlier_root
        self.block: ResidualBlock | None = None
        self.trained_key: str | None = None

    def config(self) -> dict[str, Any]:
        return {**super().config(), "recipe": self.recipe_name, "trained": self.trained_key}

    def fit(self, model: nn.Module, train_dataset: Sequence, *, device: str | torch.device = "cpu",
            seed: int = 0, steps: int | None = None, outliers: OutlierSource | None = None,
            progress: bool = False, checkpoint_every: int = 50, threads: int = 1,
            distributed: bool = False, on_step=None) -> None:
        """Train the residual block (or load it from the cache).

        ``steps`` overrides the recipe's length; ``outliers`` overrides the outlier source
        (default: the synthetic outlier family for synthetic frames, COCO at ``outlier_root``
        otherwise); ``distributed=True`` trains jointly with every rank (call it on all).
        """
        if len(train_dataset) == 0:
            raise OodBenchError("the training set is empty")
        recipe = pick_recipe(self.recipe_name, train_dataset, RECIPES)
        if steps is not None:
            recipe = replace(recipe, steps=check_positive_int("steps", steps))
        if outliers is None:
            outliers = default_outliers(train_dataset, self.outlier_root)
        settings = LoopSettings(recipe.steps, seed, checkpoint_every, threads, progress)
        device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            block = ResidualBlock.for_model(model).to(device)
        groups = [
            {"params": [p for n, p in block.named_parameters() if not n.startswith("residual")],
             "lr": recipe.lr},
            {"params": list(block.residual.parameters()),
             "lr": recipe.lr * recipe.residual_lr_factor},
        ]
        optimizer = torch.optim.Adam(groups)
        key = {"model": model_fingerprint(model), "dataset": dataset_identity(train_dataset),
               "recipe": asdict(recipe), "outliers": outlier_identity(outliers)}
        run = TrainingRun("rpl", key, block, optimizer, settings)
        dist = current_dist(device, joint=distributed)

        def step_fn(trainable: nn.Module, step: int):
            return rpl_step(model, trainable, train_dataset, outliers, recipe, seed, step, dist,
                            device)

        with frozen(model):
            run.run(step_fn, batch_images=2 * recipe.batch_size, dist=dist, on_step=on_step)
        self.block, self.trained_key = block.eval(), run.key

    def forward_model(self, model: nn.Module, images: torch.Tensor) -> SegOutput:
        if self.block is None:
            raise OodBenchError("method 'rpl' is not fitted: call fit(model, dataset)")
        output = model(images, taps=("trunk", "decoder_input"))
        dec0 = output.taps["decoder_input"]
        residual, _ = self.block.to(images.device)(output.taps["trunk"], dec0.shape[-2:])
        logits = residual_logits(model, dec0, residual, images.shape[-2:])
        return SegOutput(output.logits, output.features, {"residual_logits": logits})

    def score_output(self, output: SegOutput) -> torch.Tensor:
        return energy_score(output.taps["residual_logits"].float())


def rpl_step(model: nn.Module, block: nn.Module, dataset: Sequence, outliers: OutlierSource,
             recipe: RPLRecipe, seed: int, step: int, dist, device: torch.device):
    """One RPL training step's loss and its terms (see the module docstring)."""
    frames = recipe.batch_size
    batch = training_batch(dataset, seed, step, frames, dist, crop=recipe.crop,
                           outliers=outliers, outlier_scales=recipe.outlier_scales)
    x = normalize_images(np.concatenate([batch.images, batch.context_images]), device)
    y = torch.as_tensor(np.concatenate([batch.labels, batch.context_labels]).astype(np.int64),
                        device=device)
    with torch.no_grad():
        output = model(x, taps=("trunk", "decoder_input"))
    dec0 = output.taps["decoder_input"]
    residual, projection = block(output.taps["trunk"], dec0.shape[-2:])
    logits = residual_logits(model, dec0, residual, x.shape[-2:])
    ce, mse = inlier_losses(logits[:frames], output.logits[:frames], y[:frames])
    energy = positive_energy_loss(logits[:frames], y[:frames])
    sampled = sample_contrast_pixels(projection, y, frames, recipe.max_samples,
                                     step_generator(seed, step, dist.rank))
    contrast = (corocl_loss(*sampled, recipe.temperature) if sampled is not None
                else projection.sum() * 0)  # keeps every parameter in the graph (DDP)
    loss = ce + mse + recipe.energy_weight * energy + recipe.corocl_weight * contrast
    terms = {"ce": ce.item(), "mse": mse.item(), "energy": energy.item(),
             "corocl": contrast.item()}
    return loss, terms
