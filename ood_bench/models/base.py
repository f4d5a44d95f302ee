"""The forward contract shared by every segmentation model, and the model registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ood_bench.registry import Registry


@dataclass
class SegOutput:
    """What every model's ``forward`` returns.

    ``logits``: N×C×H×W class scores at the input resolution. ``features``: the decoder feature
    right before the last 1×1 classifier, N×D×h×w at its native resolution (what Mahalanobis,
    RPL and CG-Aug consume). ``taps``: further named intermediate tensors a method may need
    (e.g. ``"trunk"``), so methods never reach into a model's private attributes.
    """

    logits: torch.Tensor
    features: torch.Tensor
    taps: dict[str, torch.Tensor] = field(default_factory=dict)


MODELS: Registry[nn.Module] = Registry("model")


def register_model(name: str | None = None, **defaults: Any):
    """Register a model factory under ``name`` (default: the factory's ``__name__``)."""
    return MODELS.register(name, **defaults)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` (random weights; load a checkpoint separately)."""
    return MODELS.create(name, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern``."""
    return MODELS.names(pattern)
