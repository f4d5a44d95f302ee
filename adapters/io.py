"""Decoding images, label maps and ``.npz`` arrays exactly as released, with clear errors.

Every reader turns a missing file into ``DataNotFoundError`` and an unreadable one into
``OodBenchError``, both naming the path and what was expected, so a corrupt download never
surfaces as a Pillow or NumPy traceback.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ood_bench.errors import DataNotFoundError, OodBenchError
from ood_bench.io import atomic_path

#: Image file extensions the adapters recognise (lower case, with the dot).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _open(path: Path, expected: str) -> Image.Image:
    if not path.is_file():
        raise DataNotFoundError(f"missing file {str(path)!r} (expected {expected})")
    try:
        image = Image.open(path)
        image.load()
    except _UNREADABLE as error:
        raise OodBenchError(
            f"cannot decode {str(path)!r} ({error}); expected {expected} — the file is corrupt "
            "or truncated, re-extract or re-download it"
        ) from None
    return image


def read_image(path: str | Path) -> np.ndarray:
    """An 8-bit image as H×W×3 uint8 RGB (an alpha channel is dropped, grey is replicated)."""
    path = Path(path)
    image = _open(path, "an 8-bit RGB JPG/PNG/WebP image")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        raise OodBenchError(
            f"{str(path)!r} is a {image.mode} (16/32-bit) image; expected an 8-bit RGB image"
        )
    if image.mode != "RGB":
        image = image.convert("RGBA" if "transparency" in image.info else image.mode)
        image = image.convert("RGB")
    return np.asarray(image)


def read_label(path: str | Path) -> np.ndarray:
    """A label map as an H×W integer array of the raw ids stored in the file.

    Grey, palette (indices) and 16-bit PNGs are read as stored; RGB(A) files whose colour
    channels are identical (labels saved as grey RGB) give that channel; colour-coded
    visualisations are rejected.
    """
    path = Path(path)
    image = _open(path, "a single-channel label PNG")
    array = np.asarray(image)
    if array.ndim == 3:
        channels = array[..., :3]
        if not (np.array_equal(channels[..., 0], channels[..., 1])
                and np.array_equal(channels[..., 0], channels[..., 2])):
            raise OodBenchError(
                f"{str(path)!r} is a colour image; expected a single-channel label PNG of ids "
                "(is this a *_color visualisation?)"
            )
        array = channels[..., 0]
    return array.astype(np.uint8) if array.dtype == bool else array


def read_npz_array(path: str | Path, key: str) -> np.ndarray:
    """Array ``key`` of an ``.npz`` archive."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"missing file {str(path)!r} (expected a .npz with key {key!r})")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if key not in archive.files:
                raise OodBenchError(
                    f"{str(path)!r} has keys {archive.files}; expected an array named {key!r}"
                )
            return archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise OodBenchError(
            f"cannot read {str(path)!r} ({error}); expected a .npz archive with key {key!r} — "
            "re-extract or re-download it"
        ) from None


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as a PNG atomically (fast compression: these are caches)."""
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=1)


def strip_suffix(path: Path, suffix: str) -> str:
    """``path.name`` without ``suffix`` (frame ids may contain dots, so never ``split('.')``)."""
    return path.name[: -len(suffix)] if suffix and path.name.endswith(suffix) else path.name


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """Sorted image files (by extension, case-insensitive) in ``folder``."""
    pattern = "**/*" if recursive else "*"
    return sorted(
        p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
