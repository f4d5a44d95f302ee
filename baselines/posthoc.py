"""Post-hoc scores computed from the logits alone: MSP, MaxLogit, normalised entropy, energy.

Each score is a plain function of N×C×H×W logits (the functional API, usable without a model)
and one :class:`LogitScore` method class registered under four names. All scores are oriented
so that higher = more anomalous and are computed in float32 from logits shifted by their max
(no overflow, no ``log 0``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ood_bench.errors import OodBenchError
from ood_bench.models.base import SegOutput

from .base import Method, check_number, in_strips, register_method


def _shifted(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``max_k f_k`` (N×H×W) and ``(f − max) / T`` (N×C×H×W), the overflow-free softmax input.

    Written out instead of ``torch.logsumexp``: about 2× faster on CPU for the channel
    reduction of N×C×H×W logits, which keeps post-hoc scoring near a forward pass.
    """
    top = logits.amax(1, keepdim=True)
    shifted = logits - top
    if temperature != 1.0:
        shifted /= temperature
    return top[:, 0], shifted


def msp_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``1 − max_k softmax(f / T)_k`` (Hendrycks & Gimpel, ICLR 2017; T ≠ 1 for ODIN).

    N×C×H×W → N×H×W; the max softmax is ``1 / Σ_k exp((f_k − max f) / T)``.
    """
    _, shifted = _shifted(logits, temperature)
    return 1.0 - shifted.exp_().sum(1).reciprocal_()


def maxlogit_score(logits: torch.Tensor) -> torch.Tensor:
    """``−max_k f_k`` (Hendrycks et al., ICML 2022)."""
    return -logits.amax(1)


def entropy_score(logits: torch.Tensor) -> torch.Tensor:
    """Softmax entropy normalised to [0, 1]: ``−Σ_k p_k log p_k / log C``.

    With g = f − max f and Z = Σ exp g: ``−Σ p log p = log Z − Σ p g``, exact where some p_k
    underflow to 0 (no ``log 0``).
    """
    _, shifted = _shifted(logits, 1.0)
    weights = shifted.exp()
    total = weights.sum(1)
    entropy = total.log() - (weights * shifted).sum(1) / total
    return entropy / math.log(logits.shape[1])


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Free energy ``−T · logsumexp(f / T)`` (Liu et al., NeurIPS 2020)."""
    top, shifted = _shifted(logits, temperature)
    return -(top + temperature * shifted.exp_().sum(1).log_())


SCORES: dict[str, Callable[..., torch.Tensor]] = {
    "msp": msp_score,
    "maxlogit": maxlogit_score,
    "entropy": entropy_score,
    "energy": energy_score,
}


@register_method("msp", formula="msp")
@register_method("maxlogit", formula="maxlogit")
@register_method("entropy", formula="entropy")
@register_method("energy", formula="energy", temperature=1.0)
class LogitScore(Method):
    """A score that reads only the logits; ``formula`` is one of :data:`SCORES`.

    ``temperature`` (energy only, default 1) divides the logits inside the ``logsumexp``.
    ``smoothing=True`` blurs the map (7×7, σ = 1), as PEBAL and RPL do for energy.
    """

    def __init__(
        self, *, formula: str, temperature: float | None = None, smoothing: bool = False
    ) -> None:
        super().__init__(smoothing=smoothing)
        if formula not in SCORES:
            raise OodBenchError(f"formula must be one of {sorted(SCORES)}, got {formula!r}")
        if formula != "energy" and temperature is not None:
            raise OodBenchError(f"temperature applies to 'energy' only, not to {formula!r}")
        self.formula = formula
        energy = formula == "energy"
        self.temperature = check_number("temperature", temperature) if energy else None

    def config(self) -> dict[str, Any]:
        extra = {} if self.temperature is None else {"temperature": self.temperature}
        return {**super().config(), **extra}

    def score_output(self, output: SegOutput) -> torch.Tensor:
        args = () if self.temperature is None else (self.temperature,)
        return in_strips(SCORES[self.formula], output.logits.float(), *args)
