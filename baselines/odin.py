"""ODIN (Liang et al., ICLR 2018): temperature scaling plus a gradient-sign input perturbation.

Per pixel, with ŷ = argmax_k f_k(x) and S(x; T) = softmax(f(x) / T):

* loss L(x) = Σ_pixels CE(f(x)/T, ŷ) = −Σ_pixels log S_ŷ(x; T), one gradient per image;
* x̃ = x − ε·sign(∇ₓL) / std (the step that raises the max scaled softmax; ε in [0, 1] pixel
  units because the sign is divided per channel by the ImageNet std of the normalised input);
* anomaly score = 1 − max_k S_k(x̃; T).

``smiyc_quirks=True`` reproduces SegmentMeIfYouCan's segmentation ODIN instead: the CE is taken
on softmax *probabilities* (a double softmax), without temperature, and the step is
x̃ = x + ε·sign(∇ₓL) in normalised-input space (towards *higher* loss, no std division); T is
used only in the final score. The sign of a sum and of a mean of the per-pixel losses agree, so
the sum is used either way. The segmentation (``prediction``) is the clean image's argmax.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ood_bench.errors import OodBenchError
from ood_bench.models.base import SegOutput

from .base import check_number, in_strips, register_method, train_ids
from .perturbation import ChunkedMethod, input_gradient_sign, signed_step
from .posthoc import msp_score


@register_method("odin", temperature=1000.0, epsilon=0.0014, smiyc_quirks=False)
@register_method("odin-smiyc", temperature=3.0, epsilon=1e-4, smiyc_quirks=True)
class ODIN(ChunkedMethod):
    """Temperature ``temperature`` (T), perturbation magnitude ``epsilon`` (ε), ``smiyc_quirks``
    (see the module docstring), ``chunk`` images per backward pass, optional ``smoothing``."""

    def __init__(
        self,
        *,
        temperature: float,
        epsilon: float,
        smiyc_quirks: bool = False,
        chunk: int = 1,
        smoothing: bool = False,
    ) -> None:
        super().__init__(chunk=chunk, smoothing=smoothing)
        if not isinstance(smiyc_quirks, bool):
            raise OodBenchError(f"smiyc_quirks must be True or False, got {smiyc_quirks!r}")
        self.temperature = check_number("temperature", temperature)
        self.epsilon = check_number("epsilon", epsilon, allow_zero=True)
        self.smiyc_quirks = smiyc_quirks
        self.needs_gradients = self.epsilon > 0

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "temperature": self.temperature,
            "epsilon": self.epsilon,
            "smiyc_quirks": self.smiyc_quirks,
        }

    def loss(self, output: SegOutput) -> torch.Tensor:
        """The summed per-pixel cross-entropy to each pixel's own argmax (see module docstring)."""
        logits = output.logits
        target = train_ids(logits.detach())
        if self.smiyc_quirks:
            return F.cross_entropy(torch.softmax(logits, 1), target, reduction="sum")
        return F.cross_entropy(logits / self.temperature, target, reduction="sum")

    def perturb(self, model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The perturbed images x̃ and the clean prediction (argmax of the clean logits)."""
        sign, clean = input_gradient_sign(
            lambda x: self.forward_model(model, x), images, self.loss
        )
        if self.smiyc_quirks:
            perturbed = signed_step(images, -sign, self.epsilon, pixel_units=False)
        else:
            perturbed = signed_step(images, sign, self.epsilon)
        return perturbed, train_ids(clean.logits)

    def score_chunk(
        self, model: nn.Module, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.epsilon == 0:  # temperature scaling only: no backward pass needed
            perturbed, prediction = images, None
        else:
            perturbed, prediction = self.perturb(model, images)
        with torch.inference_mode():
            logits = self.forward_model(model, perturbed).logits
            prediction = train_ids(logits) if prediction is None else prediction
            return in_strips(msp_score, logits, self.temperature), prediction
