"""The one sample type every dataset yields, and the dataset registry.

Every adapter converts its files, once and in one place, to the conventions below, so methods and
metrics never see a dataset-specific label encoding.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ood_bench.errors import DataNotFoundError, OodBenchError
from ood_bench.registry import Registry

#: Label value of pixels that are not evaluated (both in ``ood`` and ``semantic``).
VOID = 255
#: ``ood`` values: in-distribution, out-of-distribution.
ID, OOD = 0, 1
#: Label value of pasted outlier-exposure objects in training label maps (Meta-OoD/PEBAL/RPL).
OUTLIER_EXPOSURE = 254
#: Number of Cityscapes train classes; ``semantic`` holds 0..NUM_CLASSES-1 or VOID.
NUM_CLASSES = 19


@dataclass
class Sample:
    """One frame of a benchmark.

    ``image`` is H×W×3 uint8 RGB. ``ood`` is H×W uint8 with 0 = in-distribution, 1 = OOD,
    255 = void, or ``None`` where the split has no public labels. ``semantic`` is H×W uint8
    Cityscapes trainIds (0–18, 255 void), or ``None`` where absent. ``name`` is the frame id,
    ``domain`` the covariate condition (``"fog"``, ``"night"``...) or ``None``.
    """

    image: np.ndarray
    ood: np.ndarray | None
    semantic: np.ndarray | None
    name: str
    domain: str | None = None

    def __reduce__(self):
        # Pickle the arrays as torch tensors: DataLoader workers then hand frames to the main
        # process through shared memory instead of copying ~8 MB per frame through a pipe.
        arrays = (_tensor(self.image), _tensor(self.ood), _tensor(self.semantic))
        return _sample_from_tensors, (*arrays, self.name, self.domain)


def _tensor(array: np.ndarray | None) -> torch.Tensor | None:
    return None if array is None else torch.from_numpy(np.require(array, requirements="W"))


def _sample_from_tensors(image, ood, semantic, name, domain) -> Sample:
    arrays = (None if t is None else t.numpy() for t in (image, ood, semantic))
    return Sample(*arrays, name, domain)


def sample_problems(sample: Sample) -> list[str]:
    """What is wrong with ``sample`` against the ``Sample`` conventions (empty list if nothing)."""
    problems = []
    image = sample.image
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3):
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        return [f"image is {dtype} of shape {shape}, expected H×W×3 uint8"]
    allowed = {"ood": {ID, OOD, VOID}, "semantic": {*range(NUM_CLASSES), VOID}}
    for field, values in allowed.items():
        label = getattr(sample, field)
        if label is None:
            continue
        if label.dtype != np.uint8 or label.shape != image.shape[:2]:
            problems.append(
                f"{field} is {label.dtype} of shape {label.shape}, "
                f"expected uint8 of shape {image.shape[:2]}"
            )
            continue
        present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
        unexpected = sorted(set(present.tolist()) - values)
        if unexpected:
            problems.append(f"{field} holds unexpected values {unexpected}")
    return problems


class SegDataset(Dataset):
    """Base class of every adapter: a lazily-read sequence of ``Sample`` objects.

    Subclasses set ``name`` (the registered name, filled in by ``get_dataset``) and implement
    ``__len__`` and ``__getitem__``; they must never load all frames into memory.
    """

    name: str = ""

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        raise NotImplementedError

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]

    def frame_name(self, index: int) -> str:
        """A name for frame ``index`` that needs no decoding (used in problem reports)."""
        return str(index)

    def check(self, index: int) -> list[str]:
        """Problems of frame ``index``: read errors, unexpected label values, wrong shapes.

        Used by ``oodbench datasets check``; an empty list means the frame is fine.
        """
        try:
            return sample_problems(self[index])
        except OodBenchError as error:
            return [str(error)]


@dataclass(frozen=True)
class DatasetInfo:
    """What the registry knows about a dataset besides its factory.

    ``folders`` are the default folder names under the data root (the first that exists is
    used), ``frames`` the expected frame count (``None`` if not fixed), ``download`` where the
    files come from.
    """

    name: str
    folders: tuple[str, ...]
    frames: int | None
    download: str


DATASETS: Registry[SegDataset] = Registry("dataset")
_INFO: dict[str, DatasetInfo] = {}


def register_dataset(
    name: str,
    *,
    folder: str | tuple[str, ...] | None = None,
    frames: int | None = None,
    download: str = "",
    **defaults: Any,
):
    """Register a dataset class (or factory) under ``name``; stack to register several splits.

    ``folder`` is the default folder name looked up under ``$OODBENCH_DATA`` when no ``root`` is
    given (a tuple lists alternatives, the first existing one wins; ``None`` for datasets that
    need no files, such as the synthetic ones). ``frames`` is the expected frame count that
    ``oodbench datasets check`` verifies, ``download`` says where the files come from.
    ``defaults`` are keyword arguments bound for this split (``split="val"``).
    """
    folders = (folder,) if isinstance(folder, str) else tuple(folder or ())
    _INFO[name] = DatasetInfo(name, folders, frames, download)
    return DATASETS.register(name, **defaults)


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of ``name`` (raises ``UnknownNameError`` with the valid names)."""
    DATASETS.factory(name)
    return _INFO.get(name, DatasetInfo(name, (), None, ""))


def data_dir(data_root: str | os.PathLike | None = None) -> Path:
    """The folder holding all dataset folders: ``data_root``, else ``$OODBENCH_DATA``, else
    ``./data``."""
    if data_root is not None:
        return Path(data_root)
    data = os.environ.get("OODBENCH_DATA")
    return Path(data) if data else Path.cwd() / "data"


def data_folder(folders: str | tuple[str, ...], data_root: str | os.PathLike | None = None) -> Path:
    """``<data dir>/<folder>`` for the first of ``folders`` that exists (else the first one)."""
    folders = (folders,) if isinstance(folders, str) else folders
    base = data_dir(data_root)
    return next((base / f for f in folders if (base / f).is_dir()), base / folders[0])


def default_root(name: str, data_root: str | os.PathLike | None = None) -> Path | None:
    """Where ``name`` is looked for without an explicit root: ``$OODBENCH_DATA/<folder>``."""
    info = dataset_info(name)
    return data_folder(info.folders, data_root) if info.folders else None


def get_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    data_root: str | os.PathLike | None = None,
    **options: Any,
) -> SegDataset:
    """Build the dataset registered as ``name``.

    ``root`` is the dataset's own folder; it defaults to ``<data root>/<default folder>``, where
    the data root is ``data_root``, else ``$OODBENCH_DATA``, else ``./data``. File-free datasets
    take no root. Errors name the dataset and where it is downloaded from.
    """
    info = dataset_info(name)
    resolved = Path(root) if root is not None else default_root(name, data_root)
    hint = f" Download: {info.download}" if info.download else ""
    if resolved is not None:
        if not resolved.is_dir():
            raise DataNotFoundError(
                f"dataset {name!r}: root folder {str(resolved)!r} does not exist. Pass root=... "
                f"(CLI: --root) or point $OODBENCH_DATA (CLI: --data-root) at the folder holding "
                f"{' or '.join(map(repr, info.folders))}; the README shows the expected layout."
                f"{hint}"
            )
        options["root"] = resolved
    _check_options(name, options)
    try:
        dataset = DATASETS.create(name, **options)
    except OodBenchError as error:
        raise type(error)(f"dataset {name!r}: {error}{hint}") from None
    dataset.name = name
    return dataset


def _check_options(name: str, options: dict[str, Any]) -> None:
    """Reject options the dataset does not take, listing the ones it does."""
    parameters = inspect.signature(DATASETS.factory(name)).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        valid = sorted(set(parameters) - {"self", "root"})
        raise OodBenchError(
            f"dataset {name!r} takes no option {', '.join(unknown)}; "
            f"valid options: {', '.join(valid) or '(none)'}"
        )


def list_datasets(pattern: str = "*") -> list[str]:
    """Sorted names of the registered datasets matching a shell-style ``pattern``."""
    return DATASETS.names(pattern)
