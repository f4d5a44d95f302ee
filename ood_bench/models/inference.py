"""Inference at native resolution: normalisation, whole-image and sliding-window prediction,
batching, optional CUDA autocast and horizontal-flip test-time augmentation.

:func:`predict` takes uint8 RGB images (H×W×3 or N×H×W×3, numpy or torch) and normalises them
with the ImageNet mean/std the community checkpoints expect; :func:`infer` takes an already
normalised N×3×H×W float tensor. Both return a :class:`SegOutput` on the model's device with
float32 ``logits`` (N×C×H×W, input size) and float32 ``features`` (N×D×h×w at the model's
feature resolution); ``taps`` are not kept (they would cost memory at full resolution).

* ``mode="whole"``: one forward pass per image (``batch_size`` images at a time).
* ``mode="slide"``: overlapping ``window``-sized crops at offsets ``0, stride, 2·stride, …`` plus
  one flush with the bottom/right border (a window larger than the image shrinks to the image).
  Logits (and features) of overlapping windows are averaged; windows are run ``batch_size`` at a
  time. Features are stitched on the feature grid, which needs every window offset to be a
  multiple of the model's feature stride (e.g. 2 for WRN-38, 4 for ResNets); otherwise pass
  ``features=False``.
* ``flip=True``: average with the prediction on the horizontally flipped input (flipped back).
* ``features=False``: skip features; ``SegOutput.features`` is then an empty N×0×0×0 tensor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ood_bench.errors import OodBenchError

from .base import SegOutput

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def normalize_images(
    images: np.ndarray | torch.Tensor, device: torch.device | str | None = None
) -> torch.Tensor:
    """uint8 RGB H×W×3 / N×H×W×3 → float32 N×3×H×W, ``(x / 255 − mean) / std`` (ImageNet)."""
    x = torch.as_tensor(images, device=device)
    if x.dtype != torch.uint8:
        raise OodBenchError(f"images must be uint8 RGB, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise OodBenchError(
            f"images must be H×W×3 or N×H×W×3 uint8 RGB, got shape {tuple(x.shape)}"
        )
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def predict(model: nn.Module, images: np.ndarray | torch.Tensor, **kwargs) -> SegOutput:
    """Normalise uint8 RGB ``images`` and run :func:`infer` on the model's device."""
    device = next(model.parameters()).device
    return infer(model, normalize_images(images, device), **kwargs)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def infer(
    model: nn.Module,
    x: torch.Tensor,
    *,
    mode: str = "whole",
    window: Sequence[int] = (512, 1024),
    stride: Sequence[int] | None = None,
    batch_size: int = 1,
    amp: str | None = None,
    flip: bool = False,
    features: bool = True,
) -> SegOutput:
    """Predict a normalised N×3×H×W batch at native resolution (see module docstring).

    ``stride`` defaults to half the window. ``amp`` is ``None``, ``"bf16"`` or ``"fp16"`` and
    needs a CUDA model.
    """
    if mode not in ("whole", "slide"):
        raise OodBenchError(f"mode must be 'whole' or 'slide', got {mode!r}")
    if batch_size < 1:
        raise OodBenchError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    if amp is not None and (amp not in AMP_DTYPES or device.type != "cuda"):
        raise OodBenchError(
            f"amp must be None or one of {sorted(AMP_DTYPES)} on a CUDA model; got amp={amp!r} "
            f"with the model on {device}"
        )
    autocast = torch.autocast("cuda", dtype=AMP_DTYPES[amp]) if amp else contextlib.nullcontext()
    run = _whole if mode == "whole" else _slide
    with torch.inference_mode(), _eval_mode(model), autocast:
        x = x.to(device)
        out = run(model, x, batch_size, flip, features, window, stride)
    return out


def _forward(model: nn.Module, x: torch.Tensor, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits and features of one batch, averaged with the flipped pass if asked."""
    out = model(x, taps=())
    logits, feats = out.logits.float(), out.features.float()
    if flip:
        flipped = model(x.flip(-1), taps=())
        logits = (logits + flipped.logits.float().flip(-1)) / 2
        feats = (feats + flipped.features.float().flip(-1)) / 2
    return logits, feats


def _empty_features(n: int, device: torch.device) -> torch.Tensor:
    return torch.empty(n, 0, 0, 0, device=device)


def _whole(model, x, batch_size, flip, features, _window, _stride) -> SegOutput:
    logits, feats = [], []
    for chunk in x.split(batch_size):
        lg, ft = _forward(model, chunk, flip)
        logits.append(lg)
        feats.append(ft if features else _empty_features(len(chunk), x.device))
    return SegOutput(torch.cat(logits), torch.cat(feats))


def window_offsets(size: int, window: int, stride: int) -> list[int]:
    """Start offsets along one axis: ``0, stride, …`` and a last window flush with the border.

    ``stride`` may not exceed ``window`` (pixels between windows would get no prediction).
    """
    if window >= size:
        return [0]
    if stride > window:
        raise OodBenchError(f"slide stride {stride} exceeds the window {window}: gaps would remain")
    offsets = list(range(0, size - window, stride))
    return offsets + [size - window]


def _slide(model, x, batch_size, flip, features, window, stride) -> SegOutput:
    if len(window) != 2 or min(window) < 1:
        raise OodBenchError(f"window must be (height, width) > 0, got {window}")
    n, _, height, width = x.shape
    win_h, win_w = min(window[0], height), min(window[1], width)
    stride = stride or (max(win_h // 2, 1), max(win_w // 2, 1))
    if len(stride) != 2 or min(stride) < 1:
        raise OodBenchError(f"stride must be (height, width) > 0, got {stride}")
    boxes = [
        (y, x0)
        for y in window_offsets(height, win_h, stride[0])
        for x0 in window_offsets(width, win_w, stride[1])
    ]
    logits_out, feats_out = [], []
    for image in x:
        crops = torch.stack([image[:, y : y + win_h, x0 : x0 + win_w] for y, x0 in boxes])
        logit_sum = count = feat_sum = feat_count = None
        for start in range(0, len(boxes), batch_size):
            lg, ft = _forward(model, crops[start : start + batch_size], flip)
            if logit_sum is None:
                logit_sum = lg.new_zeros(lg.shape[1], height, width)
                count = lg.new_zeros(1, height, width)
                scale = _feature_stride((win_h, win_w), ft.shape[-2:])
                feat_h, feat_w = -(-height // scale), -(-width // scale)
                feat_sum = ft.new_zeros(ft.shape[1], feat_h, feat_w) if features else None
                feat_count = ft.new_zeros(1, feat_h, feat_w) if features else None
            for (y, x0), window_logits, window_feats in zip(
                boxes[start : start + batch_size], lg, ft, strict=True
            ):
                logit_sum[:, y : y + win_h, x0 : x0 + win_w] += window_logits
                count[:, y : y + win_h, x0 : x0 + win_w] += 1
                if features:
                    if y % scale or x0 % scale:
                        raise OodBenchError(
                            f"cannot stitch features: window offset ({y}, {x0}) is not a multiple "
                            f"of the feature stride {scale}; pick window/stride accordingly or "
                            "pass features=False"
                        )
                    fy, fx = y // scale, x0 // scale
                    fh, fw = window_feats.shape[-2:]
                    feat_sum[:, fy : fy + fh, fx : fx + fw] += window_feats
                    feat_count[:, fy : fy + fh, fx : fx + fw] += 1
        logits_out.append(logit_sum / count)
        feats_out.append(feat_sum / feat_count if features else _empty_features(1, x.device)[0])
    return SegOutput(torch.stack(logits_out), torch.stack(feats_out))


def _feature_stride(window: Sequence[int], feature_size: Sequence[int]) -> int:
    """Input pixels per feature pixel, from a window and its feature map (ceil-divided sizes)."""
    for scale in (1, 2, 4, 8, 16, 32):
        if all(-(-w // scale) == f for w, f in zip(window, feature_size, strict=True)):
            return scale
    raise OodBenchError(
        f"cannot infer the feature stride from window {tuple(window)} and features "
        f"{tuple(feature_size)}; pass features=False"
    )
