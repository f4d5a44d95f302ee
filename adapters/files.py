"""``FileDataset``: the shared skeleton of every adapter that reads released files.

An adapter lists its frames once at construction (file names only, nothing decoded) and turns
one ``Frame`` into a ``Sample`` in ``load``; this class adds sequence access, the dataset name in
every error, and the layout errors of an empty or mismatched tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ood_bench.errors import DataNotFoundError, OodBenchError

from .base import Sample, SegDataset
from .io import read_image, read_label


@dataclass(frozen=True)
class Frame:
    """One frame's files: ``image`` (or a ``.npz`` difference / overlay), its ``label`` (``None``
    where not public), the ``base`` image an overlay is added to, and the frame's ``domain``."""

    name: str
    image: Path
    label: Path | None
    domain: str | None = None
    base: Path | None = None


class FileDataset(SegDataset):
    """A dataset backed by a list of ``Frame`` records; subclasses implement ``list_frames``
    and ``convert`` (and ``read_image`` for images rebuilt from differences)."""

    #: The layout the adapter expects, quoted in layout errors.
    layout: str = ""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataNotFoundError(f"root folder {str(self.root)!r} does not exist")
        self.frames: list[Frame] = self.list_frames()
        if not self.frames:
            raise DataNotFoundError(
                f"no frames found under {str(self.root)!r}; expected the layout {self.layout}"
            )

    def list_frames(self) -> list[Frame]:
        raise NotImplementedError

    def convert(self, label: np.ndarray, frame: Frame) -> tuple[np.ndarray, np.ndarray | None]:
        """``(ood, semantic)`` of a raw label map."""
        raise NotImplementedError

    def read_image(self, frame: Frame) -> np.ndarray:
        return read_image(frame.image)

    def __len__(self) -> int:
        return len(self.frames)

    def frame_name(self, index: int) -> str:
        return self.frames[index].name

    def __getitem__(self, index: int) -> Sample:
        frame = self.frames[index]
        try:
            image = self.read_image(frame)
            ood = semantic = None
            if frame.label is not None:
                ood, semantic = self.convert(read_label(frame.label), frame)
                if ood.shape != image.shape[:2]:
                    raise OodBenchError(
                        f"label {str(frame.label)!r} is {ood.shape[1]}×{ood.shape[0]} but its "
                        f"image is {image.shape[1]}×{image.shape[0]}; expected equal sizes"
                    )
        except OodBenchError as error:
            raise type(error)(f"dataset {self.name or type(self).__name__!r}: {error}") from None
        return Sample(image, ood, semantic, frame.name, frame.domain)


def require_folder(path: Path, layout: str) -> Path:
    """``path`` if it is a folder, else a layout error quoting ``layout``."""
    if not path.is_dir():
        raise DataNotFoundError(f"missing folder {str(path)!r}; expected the layout {layout}")
    return path


def missing_files_error(missing: Sequence[tuple[Path, Path]], what: str) -> DataNotFoundError:
    """The error for images whose ``what`` file (label, base image) is not where expected."""
    shown = "; ".join(f"{str(want)!r} for {image.name!r}" for image, want in missing[:5])
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    return DataNotFoundError(f"{len(missing)} frame(s) lack their {what}: missing {shown}{more}")
