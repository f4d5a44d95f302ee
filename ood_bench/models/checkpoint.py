"""Checkpoint I/O: read ``.pth``/``.pt``/``.safetensors``/``.pkl`` state dicts safely, load them
strictly with readable errors, and save as safetensors.

``.pth``/``.pt`` files are read with ``torch.load(weights_only=True)`` — no pickled code is ever
run. The only non-torch types allowed are numpy scalars, dtypes and arrays, because training
scripts (NVIDIA's included) store metrics such as ``mean_iu`` as numpy values next to the weights.
``.pkl`` files (detectron2 model-zoo layout: ``{"model": {name: numpy array}, ...}``) go through
an unpickler that admits only numpy arrays, dtypes and scalars and plain containers.

A model may define ``adapt_state_dict(state) -> state`` to accept a foreign key layout (the
Mask2Former models convert detectron2 checkpoints this way); :func:`load_checkpoint` calls it.
"""

from __future__ import annotations

import codecs
import inspect
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ood_bench.errors import DataNotFoundError, OodBenchError
from ood_bench.io import atomic_path

from .base import MODELS, create_model

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".pkl")
WRAPPER_KEYS = ("state_dict", "model")
PREFIXES = ("module.", "model.")


def _numpy_reconstructors() -> list[tuple[Any, str]]:
    """numpy's array/scalar reconstructors with their numpy-2 and numpy-1 pickle names."""
    core = np._core if hasattr(np, "_core") else np.core
    functions = (
        (core.multiarray.scalar, "multiarray"),
        (core.multiarray._reconstruct, "multiarray"),
        (core.numeric._frombuffer, "numeric"),
    )
    return [
        (fn, f"{package}.{module}.{fn.__name__}")
        for fn, module in functions
        for package in ("numpy.core", "numpy._core")
    ]


def _numpy_safe_globals() -> list[Any]:
    """numpy types and reconstructors ``torch.load(weights_only=True)`` may build."""
    reconstructors = _numpy_reconstructors()
    allowed: list[Any] = [np.dtype, np.ndarray, *dict.fromkeys(fn for fn, _ in reconstructors)]
    allowed += reconstructors
    allowed += [type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"]
    return allowed


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped and with ``module.``/``model.`` stripped.

    Accepts a plain state dict or one wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``
    (other entries such as ``epoch`` or ``optimizer`` are ignored).
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise OodBenchError(
            f"cannot read checkpoint {path}: expected one of {', '.join(CHECKPOINT_SUFFIXES)}"
        )
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        elif suffix == ".pkl":
            obj = _read_array_pickle(path)
        else:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, or pickled objects that are not plain data
        raise OodBenchError(f"cannot read checkpoint {path}: {err}") from err
    return _unwrap(obj, path)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        from collections import OrderedDict

        allowed = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
        allowed["collections.OrderedDict"] = OrderedDict
        allowed["_codecs.encode"] = codecs.encode  # how protocol 2 spells bytes
        allowed.update((qualname, fn) for fn, qualname in _numpy_reconstructors())
        if f"{module}.{name}" not in allowed:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return allowed[f"{module}.{name}"]


def _read_array_pickle(path: Path) -> Any:
    """A detectron2-style ``.pkl``; numpy arrays become tensors."""
    with open(path, "rb") as f:
        obj = _ArrayUnpickler(f, encoding="latin1").load()
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if isinstance(obj, Mapping):
        obj = {
            k: torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray | np.generic) else v
            for k, v in obj.items()
        }
    return obj


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise OodBenchError(f"checkpoint {path} holds no state dict (got {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(obj):
        bad = sorted(k for k in obj if k not in tensors)[:5]
        raise OodBenchError(f"checkpoint {path}: state dict entries that are not tensors: {bad}")
    return strip_prefixes(tensors)


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a ``module.`` (DataParallel) or ``model.`` prefix shared by every key, repeatedly."""
    state = dict(state)
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def mismatch_report(
    model: nn.Module, state: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    """``(missing, unexpected, shape_mismatches)`` of ``state`` against ``model.state_dict()``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        (k, tuple(expected[k].shape), tuple(state[k].shape))
        for k in expected
        if k in state and expected[k].shape != state[k].shape
    ]
    return missing, unexpected, shapes


def _format_table(
    missing: list[str],
    unexpected: list[str],
    shapes: list[tuple[str, tuple, tuple]],
    limit: int = 20,
) -> str:
    rows = [("missing", k, "") for k in missing]
    rows += [("unexpected", k, "") for k in unexpected]
    rows += [("shape", k, f"model {m} vs checkpoint {c}") for k, m, c in shapes]
    shown = rows[:limit]
    width = max(len(k) for _, k, _ in shown)
    lines = [f"  {kind:<10}  {key:<{width}}  {detail}".rstrip() for kind, key, detail in shown]
    if len(rows) > limit:
        lines.append(f"  ... and {len(rows) - limit} more")
    return "\n".join(lines)


def load_checkpoint(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    strict: bool = True,
) -> tuple[list[str], list[str]]:
    """Load a checkpoint file (or state dict) into ``model``; return ``(missing, unexpected)``.

    With ``strict=True`` (default) any missing or unexpected key, and always any shape mismatch,
    raises :class:`OodBenchError` with a table of the offending keys and the file name.
    """
    name, state = _read(checkpoint)
    return _load_state(model, _adapted(model, state), name, strict)


def _read(
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
) -> tuple[str, dict[str, torch.Tensor]]:
    """``(description for errors, state dict with wrapper prefixes stripped)``."""
    if isinstance(checkpoint, Mapping):
        return "state dict", strip_prefixes(checkpoint)
    return f"checkpoint {checkpoint}", read_state_dict(checkpoint)


def _adapted(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` in ``model``'s key schema (e.g. detectron2 → ours) via ``adapt_state_dict``."""
    adapt = getattr(model, "adapt_state_dict", None)
    return state if adapt is None else adapt(state)


def _load_state(
    model: nn.Module, state: Mapping[str, torch.Tensor], name: str, strict: bool
) -> tuple[list[str], list[str]]:
    missing, unexpected, shapes = mismatch_report(model, state)
    if shapes or (strict and (missing or unexpected)):
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} wrong shape"
        hint = ""
        if "ood_head.weight" in missing:
            hint = "\n(the checkpoint has no ood_head: build the model with ood_head=False)"
        elif "ood_head.weight" in unexpected:
            hint = "\n(the checkpoint has an ood_head: build the model with ood_head=True)"
        raise OodBenchError(
            f"{name} does not match {type(model).__name__} ({counts}):\n"
            f"{_format_table(missing, unexpected, shapes)}{hint}"
        )
    model.load_state_dict(state, strict=False)
    return missing, unexpected


def save_checkpoint(
    model_or_state: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike
) -> Path:
    """Write a state dict as ``.safetensors`` atomically; return the path."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise OodBenchError(
            f"save_checkpoint writes safetensors; name the file *.safetensors: {path}"
        )
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp))
    return path


def load_model(
    name: str, checkpoint: str | os.PathLike | None = None, strict: bool = True, **kwargs: Any
) -> nn.Module:
    """``create_model(name, **kwargs)``, load ``checkpoint`` into it (if given), ``eval()`` it.

    When ``ood_head`` is not given and the checkpoint carries exactly the extra keys of the
    model's uncertainty head (the paper's ``DeepLab_best.pth``, ``M2F_best.pth``), the model is
    built with ``ood_head=True`` so the trained head is loaded, not reported as unexpected.
    """
    model = create_model(name, **kwargs)
    if checkpoint is None:
        return model.eval()
    description, state = _read(checkpoint)
    adapted = _adapted(model, state)
    if "ood_head" not in kwargs and _accepts(name, "ood_head"):
        unexpected = set(adapted) - set(model.state_dict())
        if unexpected:
            with_head = create_model(name, ood_head=True, **kwargs)
            head_keys = set(with_head.state_dict()) - set(model.state_dict())
            if unexpected == head_keys:
                model, adapted = with_head, _adapted(with_head, state)
    _load_state(model, adapted, description, strict)
    return model.eval()


def _accepts(name: str, option: str) -> bool:
    """Whether the factory of model ``name`` takes the keyword ``option``."""
    return option in inspect.signature(MODELS.factory(name)).parameters
