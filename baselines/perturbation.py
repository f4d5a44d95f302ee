"""Input pre-processing shared by ODIN and Mahalanobis: one signed-gradient step on the image.

Methods that perturb their input need a backward pass through the model, so they score images
``chunk`` at a time (default 1): peak memory is that of one training step of the model on
``chunk`` full-size images (activations are kept for the backward pass), not that of a forward
pass. BatchNorm runs in eval mode, so each image's gradient is independent of the others in its
chunk and a loss summed over the chunk gives every image its own gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ood_bench.errors import OodBenchError
from ood_bench.models.base import SegOutput
from ood_bench.models.inference import IMAGENET_STD

from .base import Method, MethodOutput, eval_mode


def input_gradient_sign(
    forward: Callable[[torch.Tensor], SegOutput],
    images: torch.Tensor,
    loss_fn: Callable[[SegOutput], torch.Tensor],
) -> tuple[torch.Tensor, SegOutput]:
    """``sign(∇ₓ loss_fn(forward(x)))`` at ``x = images`` and the (detached) clean output.

    Works inside ``torch.inference_mode``/``no_grad`` blocks; model parameters get no ``.grad``.
    Elements with an exactly zero gradient get sign 0 (they are not perturbed).
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = images.detach().clone().requires_grad_(True)
        output = forward(x)
        (grad,) = torch.autograd.grad(loss_fn(output), x)
    clean = SegOutput(output.logits.detach(), output.features.detach())
    return grad.sign(), clean


def signed_step(
    images: torch.Tensor, sign: torch.Tensor, epsilon: float, *, pixel_units: bool = True
) -> torch.Tensor:
    """``images − ε·sign``, with ``sign`` divided per channel by the ImageNet std when
    ``pixel_units`` (so ε is a step in [0, 1] pixel units for normalised ``images``)."""
    if not pixel_units:
        return images - epsilon * sign
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return images - epsilon * sign / std


class ChunkedMethod(Method):
    """A method that scores ``chunk`` images at a time (those that back-propagate to the input).

    Subclasses implement :meth:`score_chunk`, returning N×H×W scores and N×H×W predictions.
    """

    def __init__(self, *, chunk: int = 1, smoothing: bool = False) -> None:
        super().__init__(smoothing=smoothing)
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise OodBenchError(f"chunk must be a positive integer, got {chunk!r}")
        self.chunk = chunk

    def score_chunk(
        self, model: nn.Module, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def score(self, model: nn.Module, images: torch.Tensor) -> MethodOutput:
        scores, predictions = [], []
        with eval_mode(model):
            for part in images.split(self.chunk):
                chunk_scores, prediction = self.score_chunk(model, part)
                scores.append(chunk_scores.float())
                predictions.append(prediction)
        return MethodOutput(self.postprocess(torch.cat(scores)), torch.cat(predictions))
