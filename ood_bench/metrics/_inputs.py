"""Input handling shared by the metric states: accept numpy arrays and torch tensors alike."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import OodBenchError


def to_numpy(array: Any, name: str) -> np.ndarray:
    """Return ``array`` as a numpy array without copying when possible (torch tensors included)."""
    if hasattr(array, "detach") and hasattr(array, "cpu"):  # torch.Tensor, without importing torch
        array = array.detach().cpu()
        if str(array.dtype) == "torch.bfloat16":  # numpy has no bfloat16; float32 holds it exactly
            array = array.float()
        array = array.numpy()
    try:
        return np.asarray(array)
    except (TypeError, ValueError) as error:
        kind = type(array).__name__
        raise OodBenchError(f"{name} must be an array or tensor, got {kind}") from error


def frame_suffix(frame: str | None) -> str:
    """`` in frame 'x'`` for error messages when the caller named the frame, else nothing."""
    return f" in frame {frame!r}" if frame is not None else ""


def check_same_shape(a: np.ndarray, b: np.ndarray, names: tuple[str, str], frame: str | None):
    """Raise a ``ValueError`` naming both arrays (and the frame) when their shapes differ."""
    if a.shape != b.shape:
        raise OodBenchError(
            f"shape mismatch{frame_suffix(frame)}: {names[0]} {a.shape} vs {names[1]} {b.shape}"
        )


def require_integer(array: np.ndarray, name: str) -> None:
    """Class ids and labels must be integers (or bool); floats usually mean un-argmaxed logits."""
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise OodBenchError(f"{name} must hold integer class ids, got dtype {array.dtype}")


def describe_values(values: np.ndarray, limit: int = 8) -> str:
    """A short, sorted list of distinct offending values for an error message."""
    distinct = np.unique(values)
    shown = ", ".join(str(v) for v in distinct[:limit].tolist())
    return shown + (f", ... ({distinct.size} distinct)" if distinct.size > limit else "")
