"""The one sample type every dataset yields, and the dataset registry.

Every adapter converts its files, once and in one place, to the conventions below, so methods and
metrics never see a dataset-specific label encoding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ood_bench.errors import DataNotFoundError
from ood_bench.registry import Registry

#: Label value of pixels that are not evaluated (both in ``ood`` and ``semantic``).
VOID = 255
#: ``ood`` values: in-distribution, out-of-distribution.
ID, OOD = 0, 1
#: Label value of pasted outlier-exposure objects in training label maps (Meta-OoD/PEBAL/RPL).
OUTLIER_EXPOSURE = 254


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


DATASETS: Registry[SegDataset] = Registry("dataset")
#: Registered name -> default folder name under ``$OODBENCH_DATA``.
_DEFAULT_FOLDERS: dict[str, str | None] = {}


def register_dataset(name: str, *, folder: str | None = None, **defaults: Any):
    """Register a dataset class (or factory) under ``name``; stack to register several splits.

    ``folder`` is the default folder name looked up under ``$OODBENCH_DATA`` when no ``root`` is
    given (``None`` for datasets that need no files, such as the synthetic ones). ``defaults``
    are keyword arguments bound for this split (``split="val"``).
    """
    _DEFAULT_FOLDERS[name] = folder
    return DATASETS.register(name, **defaults)


def default_root(name: str) -> Path | None:
    """Where ``name`` is looked for without an explicit root: ``$OODBENCH_DATA/<folder>``."""
    DATASETS.factory(name)
    folder = _DEFAULT_FOLDERS.get(name)
    if folder is None:
        return None
    data = os.environ.get("OODBENCH_DATA")
    return Path(data) / folder if data else Path.cwd() / "data" / folder


def get_dataset(name: str, root: str | os.PathLike | None = None, **options: Any) -> SegDataset:
    """Build the dataset registered as ``name``.

    ``root`` defaults to ``$OODBENCH_DATA/<default folder>`` (``./data/<folder>`` when the
    variable is unset); file-free datasets take no root.
    """
    resolved = Path(root) if root is not None else default_root(name)
    if resolved is not None:
        if not resolved.is_dir():
            raise DataNotFoundError(
                f"dataset {name!r}: root folder {str(resolved)!r} does not exist. "
                f"Pass root=... (CLI: --data-root) or set $OODBENCH_DATA to the folder holding "
                f"{_DEFAULT_FOLDERS[name]!r}; see the README for the expected layout and download."
            )
        options["root"] = resolved
    dataset = DATASETS.create(name, **options)
    dataset.name = name
    return dataset


def list_datasets(pattern: str = "*") -> list[str]:
    """Sorted names of the registered datasets matching a shell-style ``pattern``."""
    return DATASETS.names(pattern)
