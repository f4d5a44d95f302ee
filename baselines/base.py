"""The method interface: a model's output (or the model plus the image) → score map + prediction.

A method is one file plus one ``@register_method``. Post-hoc methods only implement
``score_output``; methods that need gradients (ODIN, input pre-processing) override ``score``
(``perturbation.ChunkedMethod`` does it chunk by chunk);
methods that need statistics or training set ``requires_fit = True`` and implement ``fit``,
which the runner calls (results cached by config hash) before scoring.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ood_bench.errors import OodBenchError
from ood_bench.models.base import SegOutput
from ood_bench.registry import Registry


@dataclass
class MethodOutput:
    """``scores``: N×H×W float32 anomaly scores (higher = more anomalous) at input size;
    ``prediction``: N×H×W int64 Cityscapes trainIds."""

    scores: torch.Tensor
    prediction: torch.Tensor


def check_number(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as a float if it is a number > 0 (≥ 0 with ``allow_zero``), else a clear error."""
    bound = ">= 0" if allow_zero else "> 0"
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if not is_number or not (value >= 0 if allow_zero else value > 0):
        raise OodBenchError(f"{name} must be a number {bound}, got {value!r}")
    return float(value)


#: Channels × rows of an N×C×H×W CPU map reduced at a time by :func:`in_strips` (32 rows of
#: 19 logits): a strip's temporaries stay in the CPU cache, about 3× faster than whole-map
#: reductions at 512×1024 (see benchmarks/bench_methods.py).
STRIP_SIZE = 19 * 32


def in_strips(
    reduce: Callable[..., torch.Tensor], maps: torch.Tensor, *args: Any
) -> torch.Tensor:
    """``reduce(maps, *args)`` for a channel reduction N×C×H×W → N×H×W, computed a few rows at a
    time on CPU (``STRIP_SIZE // C`` rows; same result). On GPU the map goes whole (there,
    more kernel launches would cost more than they save)."""
    rows = max(1, STRIP_SIZE // maps.shape[1])
    if maps.device.type != "cpu" or maps.shape[2] <= rows:
        return reduce(maps, *args)
    return torch.cat([reduce(part, *args) for part in maps.split(rows, 2)], 1)


def train_ids(logits: torch.Tensor) -> torch.Tensor:
    """N×C×H×W logits → N×H×W int64 argmax over classes (first maximum on ties).

    Uses ``max(1).indices``, which is about 4× faster than ``argmax(1)`` on CPU for this layout.
    """
    return logits.max(1).indices


def gaussian_smooth(scores: torch.Tensor, size: int = 7, sigma: float = 1.0) -> torch.Tensor:
    """Blur N×H×W score maps with a normalised ``size``×``size`` Gaussian (PEBAL/RPL use 7, σ=1).

    Borders are reflect-padded so the map keeps its size and edge values are not pulled to 0.
    """
    half = size // 2
    offsets = torch.arange(size, dtype=torch.float64, device=scores.device) - half
    kernel_1d = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel_1d = (kernel_1d / kernel_1d.sum()).to(scores.dtype)
    x = F.pad(scores[:, None], (half, half, half, half), mode="reflect")
    x = F.conv2d(x, kernel_1d.view(1, 1, 1, size))
    x = F.conv2d(x, kernel_1d.view(1, 1, size, 1))
    return x[:, 0]


class Method:
    """Base class of every OOD method.

    Subclasses set ``requires_fit`` / ``needs_gradients`` and implement ``score_output`` (or
    override ``score``). ``smoothing=True`` applies :func:`gaussian_smooth` to the score map.
    ``changes_segmentation`` is True only for methods whose prediction is not the argmax of the
    given model's logits (fine-tuned models such as RuleAug); RPL, ODIN, ... keep it False.
    """

    name: str = ""
    #: The model families (``model.family``) a method works on; None = any segmenter.
    model_families: tuple[str, ...] | None = None
    requires_fit: bool = False
    needs_gradients: bool = False
    changes_segmentation: bool = False

    def __init__(self, *, smoothing: bool = False) -> None:
        if not isinstance(smoothing, bool):
            raise OodBenchError(f"smoothing must be True or False, got {smoothing!r}")
        self.smoothing = smoothing

    def config(self) -> dict[str, Any]:
        """The options that define this method's numbers (stored with every result)."""
        return {"name": self.name, "smoothing": self.smoothing}

    @classmethod
    def needs_training_data(cls, model: nn.Module, fit_options: dict[str, Any]) -> bool:
        """Whether ``fit(model, …, **fit_options)`` reads a training set (False for a model
        that already carries the method's trained parts, e.g. CG-Aug's ``DeepLab_best.pth``)."""
        return cls.requires_fit

    def fit(self, model: nn.Module, train_dataset: Any, **options: Any) -> None:
        """Estimate statistics or train extra modules; only for ``requires_fit`` methods."""
        raise NotImplementedError(f"method {self.name!r} needs no fitting")

    def score_output(self, output: SegOutput) -> torch.Tensor:
        """N×H×W anomaly scores from a model output (post-hoc methods implement this)."""
        raise NotImplementedError

    def forward_model(self, model: nn.Module, images: torch.Tensor) -> SegOutput:
        """The model output the method scores (trained methods may add their own modules)."""
        return model(images)

    def score(self, model: nn.Module, images: torch.Tensor) -> MethodOutput:
        """Scores and trainId prediction for a batch of ImageNet-normalised images.

        The model runs in eval mode (BatchNorm with running statistics) and is put back in the
        mode it was in.
        """
        with torch.inference_mode(), eval_mode(model):
            output = self.forward_model(model, images)
            scores = self.score_output(output).float()
            return MethodOutput(self.postprocess(scores), train_ids(output.logits))

    def postprocess(self, scores: torch.Tensor) -> torch.Tensor:
        """Optional smoothing shared by every method."""
        return gaussian_smooth(scores) if self.smoothing else scores


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode inside the block, then restore its train/eval flag.

    A model whose top-level flag is already eval is left alone (no walk over its modules).
    """
    if not model.training:
        yield model
        return
    model.eval()
    try:
        yield model
    finally:
        model.train()


def model_fingerprint(model: nn.Module) -> str:
    """A SHA-256 digest of the model's state dict (names, dtypes, shapes and values).

    Two models with the same weights get the same digest, so statistics fitted on one model
    (Mahalanobis) are reused only for that model; key caches on it, never on object identity.
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


METHODS: Registry[Method] = Registry("method")


def register_method(name: str | None = None, **defaults: Any):
    """Register a ``Method`` subclass under ``name``; stack to register presets (``odin-smiyc``)."""

    def decorator(cls):
        METHODS.register(name or cls.name, **defaults)(cls)
        return cls

    return decorator


def get_method(name: str, **options: Any) -> Method:
    """Build the method registered as ``name`` with ``options`` over its registered defaults.

    Unknown options are rejected with the list of the options the method takes.
    """
    parameters = inspect.signature(METHODS.factory(name)).parameters.values()
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    valid = sorted(p.name for p in parameters if p.kind in named)
    unknown = sorted(set(options) - set(valid))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in parameters):
        raise OodBenchError(
            f"method {name!r} takes no option {', '.join(unknown)}; "
            f"valid options: {', '.join(valid) or '(none)'}"
        )
    method = METHODS.create(name, **options)
    method.name = name
    return method


def list_methods(pattern: str = "*") -> list[str]:
    """Sorted names of the registered methods matching a shell-style ``pattern``."""
    return METHODS.names(pattern)
