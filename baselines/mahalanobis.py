"""Mahalanobis distance to class-conditional Gaussians with one tied covariance (Lee et al.,
NeurIPS 2018), per pixel on the decoder feature ``SegOutput.features`` (as SMIYC's baseline).

Fitting streams over the training set: every feature pixel whose trainId label (nearest-
downsampled to the feature grid; 255 and any id ≥ C ignored) is class c adds to that class's
count and feature sum, and to one global Σ z zᵀ, all in float64 — pixel features are never
collected. Then μ_c = Σz / n_c and the tied covariance is

    Σ = (1/N) Σ_c Σ_{i ∈ c} (z_i − μ_c)(z_i − μ_c)ᵀ = (1/N) (Σ_i z_i z_iᵀ − Σ_c n_c μ_c μ_cᵀ),

which is what ``sklearn.covariance.EmpiricalCovariance`` gives on the class-centred features. Its
(pseudo-)inverse is used through a whitening matrix W (Σ⁺ = W Wᵀ, eigenvalues below
``D·eps·λ_max`` dropped, as ``scipy.linalg.pinvh``), so the score

    s(x) = min_c (z(x) − μ_c)ᵀ Σ⁺ (z(x) − μ_c) = min_c ‖Wᵀ(z(x) − μ_c)‖²

is a sum of squares (no cancellation). Classes without training pixels are left out of the min.
The distance is computed at the feature resolution and the distance *map* is upsampled
bilinearly (``align_corners=True``, as the logits) to the input size. SMIYC upsamples the
feature first and measures at every input pixel; measuring on the h×w grid is 16× less work at
stride 4 and gives a smooth map of the same distances at the feature pixels.

Optional input pre-processing (``epsilon`` > 0): x̂ = x − ε·sign(∇ₓ Σ_pixels s(x)) / std, the
step that brings the image closer to its nearest class, then s is measured on x̂.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ood_bench.cache import cache_dir, config_hash
from ood_bench.errors import OodBenchError
from ood_bench.io import atomic_path
from ood_bench.models.inference import normalize_images

from .base import (
    check_number,
    eval_mode,
    in_strips,
    model_fingerprint,
    register_method,
    train_ids,
)
from .perturbation import ChunkedMethod, input_gradient_sign, signed_step

#: Bump when the fitted statistics change meaning, so old cache files are not reused.
STATISTICS_VERSION = 1


@dataclass
class GaussianStatistics:
    """Per-class pixel counts (C), means (C×D) and the tied covariance (D×D), float64."""

    counts: torch.Tensor
    means: torch.Tensor
    covariance: torch.Tensor

    def whitening(self) -> torch.Tensor:
        """D×r matrix W with W Wᵀ = pseudo-inverse of the covariance (r = its numerical rank)."""
        eigenvalues, eigenvectors = torch.linalg.eigh(self.covariance)
        cutoff = eigenvalues.max().clamp(min=0) * len(eigenvalues) * torch.finfo(torch.float64).eps
        keep = eigenvalues > cutoff
        return eigenvectors[:, keep] / eigenvalues[keep].sqrt()

    @property
    def precision(self) -> torch.Tensor:
        """The pseudo-inverse of the tied covariance (D×D)."""
        w = self.whitening()
        return w @ w.T

    def save(self, path: Path, metadata: dict[str, Any]) -> None:
        """Write the statistics atomically as safetensors (``metadata`` stored as JSON)."""
        from safetensors.torch import save_file

        tensors = {"counts": self.counts, "means": self.means, "covariance": self.covariance}
        with atomic_path(path, ".safetensors") as tmp:
            save_file(
                {k: v.contiguous().cpu() for k, v in tensors.items()},
                str(tmp),
                metadata={"oodbench": json.dumps(metadata, sort_keys=True, default=str)},
            )

    def digest(self) -> str:
        """A short content hash of the statistics (names uncached fits in ``config()``)."""
        digest = hashlib.sha256()
        for tensor in (self.counts, self.means, self.covariance):
            digest.update(tensor.contiguous().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

    @classmethod
    def load(cls, path: Path) -> GaussianStatistics:
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        return cls(tensors["counts"], tensors["means"], tensors["covariance"])


class FeatureMoments:
    """Streaming per-class counts, feature sums and one global Σ z zᵀ (float64 accumulators)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.counts: torch.Tensor | None = None
        self.sums: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add N×D×h×w ``features`` whose pixels carry N×h×w trainId ``labels``."""
        dim = features.shape[1]
        if self.counts is None:
            kw = {"dtype": torch.float64, "device": features.device}
            self.counts = torch.zeros(self.num_classes, **kw)
            self.sums = torch.zeros(self.num_classes, dim, **kw)
            self.outer = torch.zeros(dim, dim, **kw)
        z = features.permute(0, 2, 3, 1).reshape(-1, dim)
        y = labels.reshape(-1).to(z.device)
        valid = y < self.num_classes
        z, y = z[valid].double(), y[valid]
        self.counts += torch.bincount(y, minlength=self.num_classes).double()
        self.sums.index_add_(0, y, z)
        self.outer += z.T @ z

    def compute(self) -> GaussianStatistics:
        if self.counts is None or self.counts.sum() == 0:
            raise OodBenchError(
                "no labelled training pixel was seen: the training set needs semantic trainIds"
            )
        seen = self.counts > 0
        means = torch.zeros_like(self.sums)
        means[seen] = self.sums[seen] / self.counts[seen, None]
        between = (means * self.counts[:, None]).T @ means
        covariance = (self.outer - between) / self.counts.sum()
        covariance = (covariance + covariance.T) / 2
        return GaussianStatistics(self.counts.cpu(), means.cpu(), covariance.cpu())


def min_mahalanobis(
    features: torch.Tensor, means: torch.Tensor, whitening: torch.Tensor
) -> torch.Tensor:
    """N×D×h×w features → N×h×w ``min_c ‖Wᵀ(z − μ_c)‖²`` over the rows of ``means`` (C'×D)."""
    white = torch.einsum("ndhw,dr->nrhw", features, whitening)
    centres = means @ whitening
    best = None
    for centre in centres:
        distance = (white - centre[None, :, None, None]).square_().sum(1)
        best = distance if best is None else torch.minimum(best, distance)
    return best


def _batches(
    dataset: Sequence, indices: Sequence[int], batch_size: int
) -> Iterator[list]:
    """Samples in groups of up to ``batch_size`` that share one image size."""
    group: list = []
    for index in indices:
        sample = dataset[index]
        if group and (len(group) == batch_size or group[0].image.shape != sample.image.shape):
            yield group
            group = []
        group.append(sample)
    if group:
        yield group


def _dataset_identity(dataset: Sequence) -> dict[str, Any] | None:
    """What names a registered dataset's content; None for unnamed ones (plain lists)."""
    name = getattr(dataset, "name", "")
    if not name:
        return None
    return {"name": name, "root": str(getattr(dataset, "root", "")), "frames": len(dataset)}


@register_method("mahalanobis")
class Mahalanobis(ChunkedMethod):
    """Options: ``epsilon`` (input pre-processing, default 0 = none), ``chunk`` images per
    backward pass when ε > 0, ``smoothing``. Call :meth:`fit` before scoring."""

    requires_fit = True

    def __init__(self, *, epsilon: float = 0.0, chunk: int = 1, smoothing: bool = False) -> None:
        super().__init__(chunk=chunk, smoothing=smoothing)
        self.epsilon = check_number("epsilon", epsilon, allow_zero=True)
        self.needs_gradients = self.epsilon > 0
        self.statistics: GaussianStatistics | None = None
        self.statistics_key: str | None = None
        self.statistics_path: Path | None = None
        self._on_device: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "epsilon": self.epsilon, "statistics": self.statistics_key}

    def fit(
        self,
        model: nn.Module,
        train_dataset: Sequence,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 1,
        max_frames: int | None = None,
        seed: int = 0,
        progress: bool = False,
    ) -> Path | None:
        """Estimate the statistics on ``train_dataset`` (or load them from the cache).

        ``model`` must already be on ``device``. ``max_frames`` uses a random subset of that
        many frames drawn with ``seed``. Returns the cached statistics file, keyed by the
        model's weights, the dataset (registered name, root, length) and the frames used;
        a dataset without a ``name`` (e.g. a plain list of samples) is not cached (None).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise OodBenchError(f"batch_size must be a positive integer, got {batch_size!r}")
        if len(train_dataset) == 0:
            raise OodBenchError("the training set is empty")
        indices = list(range(len(train_dataset)))
        if max_frames is not None:
            if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
                raise OodBenchError(f"max_frames must be a positive integer, got {max_frames!r}")
            if max_frames < len(indices):
                rng = np.random.default_rng(seed)
                indices = sorted(rng.choice(len(indices), max_frames, replace=False).tolist())
        device = torch.device(device)
        model_device = next(model.parameters()).device
        if model_device != device and not (device.type == model_device.type == "cuda"):
            raise OodBenchError(f"the model is on {model_device}, but device={str(device)!r}")
        identity = _dataset_identity(train_dataset)
        if identity is None:  # nothing names the frames' content: estimate, never cache
            statistics = self._estimate(model, train_dataset, indices, device, batch_size, progress)
            key, path = statistics.digest(), None
        else:
            key_config = {
                "model": model_fingerprint(model),
                "dataset": identity,
                "frames": indices if max_frames is not None else "all",
                "version": STATISTICS_VERSION,
            }
            key = config_hash(key_config)
            path = cache_dir("methods", "mahalanobis") / f"{key}.safetensors"
            if path.is_file():
                statistics = GaussianStatistics.load(path)
            else:
                statistics = self._estimate(
                    model, train_dataset, indices, device, batch_size, progress
                )
                statistics.save(path, key_config)
        self.statistics, self.statistics_key, self.statistics_path = statistics, key, path
        self._on_device.clear()
        return path

    @staticmethod
    def _estimate(model, dataset, indices, device, batch_size, progress) -> GaussianStatistics:
        from rich.progress import track

        moments = None
        total = -(-len(indices) // batch_size)
        batches = _batches(dataset, indices, batch_size)
        with torch.no_grad(), eval_mode(model):
            for samples in track(batches, total=total, disable=not progress,
                                 description="Mahalanobis statistics", transient=True):
                if any(s.semantic is None for s in samples):
                    missing = next(s.name for s in samples if s.semantic is None)
                    raise OodBenchError(f"training frame {missing!r} has no semantic labels")
                images = normalize_images(np.stack([s.image for s in samples]), device)
                output = model(images)
                labels = torch.as_tensor(np.stack([s.semantic for s in samples]), device=device)
                labels = F.interpolate(
                    labels[:, None].float(), size=output.features.shape[-2:], mode="nearest"
                )[:, 0].long()
                if moments is None:
                    moments = FeatureMoments(output.logits.shape[1])
                moments.update(output.features.float(), labels)
        return moments.compute()

    def _prepared(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Means of the seen classes and the whitening matrix, on ``like``'s device/dtype."""
        if self.statistics is None:
            raise OodBenchError("method 'mahalanobis' is not fitted: call fit(model, dataset)")
        key = (like.device, like.dtype)
        if key not in self._on_device:
            stats = self.statistics
            means = stats.means[stats.counts > 0]
            # Plain (non-inference) tensors, so the ε step can back-propagate through them.
            with torch.inference_mode(False):
                self._on_device[key] = (
                    means.to(like.device, like.dtype),
                    stats.whitening().to(like.device, like.dtype),
                )
        return self._on_device[key]

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """N×h×w min squared Mahalanobis distance of N×D×h×w ``features``."""
        means, whitening = self._prepared(features)
        if features.shape[1] != means.shape[1]:
            raise OodBenchError(
                f"features have {features.shape[1]} channels but the statistics were fitted on "
                f"{means.shape[1]}: fit on the model you score"
            )
        return in_strips(min_mahalanobis, features, means, whitening)

    def score_chunk(
        self, model: nn.Module, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        prediction = None
        if self.epsilon > 0:
            sign, clean = input_gradient_sign(
                lambda x: self.forward_model(model, x),
                images,
                lambda output: self.distance(output.features.float()).sum(),
            )
            images, prediction = signed_step(images, sign, self.epsilon), train_ids(clean.logits)
        with torch.inference_mode():
            output = self.forward_model(model, images)
            distance = self.distance(output.features.float())
            scores = F.interpolate(
                distance[:, None], size=images.shape[-2:], mode="bilinear", align_corners=True
            )[:, 0]
            return scores, train_ids(output.logits) if prediction is None else prediction
