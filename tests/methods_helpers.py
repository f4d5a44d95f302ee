"""Shared fixtures of the method tests: a tiny differentiable segmenter and finite differences."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ood_bench.adapters.base import Sample, SegDataset
from ood_bench.models.base import SegOutput


class TinySeg(nn.Module):
    """Smooth (tanh) segmenter: features at half resolution, logits upsampled like DeepLab's."""

    def __init__(self, num_classes: int = 3, dim: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Conv2d(3, dim, 3, padding=1)
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, x: torch.Tensor) -> SegOutput:
        features = F.avg_pool2d(torch.tanh(self.body(x)), 2)
        logits = F.interpolate(
            self.classifier(features), size=x.shape[-2:], mode="bilinear", align_corners=True
        )
        return SegOutput(logits, features)


def finite_difference(fn: Callable[[torch.Tensor], float], x: torch.Tensor, h: float = 1e-6):
    """Central-difference gradient of a scalar function of a float64 tensor."""
    grad = torch.zeros_like(x)
    flat, out = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.numel()):
        plus, minus = flat.clone(), flat.clone()
        plus[i] += h
        minus[i] -= h
        out[i] = (fn(plus.view_as(x)) - fn(minus.view_as(x))) / (2 * h)
    return grad


def random_samples(count: int, height: int, width: int, seed: int = 0) -> list[Sample]:
    """Frames with random images and trainIds (0–18 plus some void pixels)."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        semantic = rng.integers(0, 19, (height, width), dtype=np.uint8)
        semantic[rng.random((height, width)) < 0.1] = 255
        samples.append(Sample(image, None, semantic, f"frame{i}", None))
    return samples


class NamedFrames(SegDataset):
    """In-memory frames posing as a registered dataset (so fitted statistics get cached)."""

    def __init__(self, samples: list[Sample], name: str = "tiny-train") -> None:
        self.samples, self.name = samples, name

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]
