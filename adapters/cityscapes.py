"""Cityscapes (``leftImg8bit`` + ``gtFine``), the in-distribution training data.

Labels are read from ``*_gtFine_labelTrainIds.png`` when present (made by cityscapesScripts),
else converted from the released ``*_gtFine_labelIds.png`` through the official 34→19 table.
Every labelled pixel is in-distribution: ``ood`` is 0 on the 19 classes and void elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import register_dataset
from .files import FileDataset, Frame, missing_files_error, require_folder
from .labels import LABEL_IDS_TO_TRAIN, TRAIN_IDS, inlier_where_labelled

DOWNLOAD = (
    "https://www.cityscapes-dataset.com/downloads/ (registration): leftImg8bit_trainvaltest.zip "
    "and gtFine_trainvaltest.zip"
)
IMAGE_SUFFIX = "_leftImg8bit.png"


def paired_files(
    root: Path, image_dir: str, label_dir: str, split: str, label_suffixes: tuple[str, ...],
    layout: str,
) -> list[tuple[str, Path, Path | None]]:
    """``(frame id, image, label)`` for every ``<image_dir>/<split>/<city>/<id>_leftImg8bit.png``.

    The label is ``<label_dir>/<split>/<city>/<id><suffix>`` for the first suffix that exists,
    or ``None``. Shared by the Cityscapes-style datasets (Cityscapes, Lost and Found).
    """
    images = require_folder(root / image_dir / split, layout)
    labels = root / label_dir / split
    pairs = []
    for image in sorted(images.glob(f"*/*{IMAGE_SUFFIX}")):
        fid = image.name[: -len(IMAGE_SUFFIX)]
        folder = labels / image.parent.name
        label = next(
            (folder / f"{fid}{s}" for s in label_suffixes if (folder / f"{fid}{s}").is_file()),
            None,
        )
        pairs.append((fid, image, label))
    return pairs


def require_labels(
    pairs: list[tuple[str, Path, Path | None]], root: Path, label_dir: str, split: str, suffix: str
) -> list[Frame]:
    """Frames of ``pairs``; a missing label is a layout error naming the expected file."""
    missing = [
        (image, root / label_dir / split / image.parent.name / f"{fid}{suffix}")
        for fid, image, label in pairs if label is None
    ]
    if missing:
        raise missing_files_error(missing, f"{label_dir} label")
    return [Frame(fid, image, label) for fid, image, label in pairs]


@register_dataset("cityscapes-train", folder="cityscapes", frames=2975, download=DOWNLOAD,
                  split="train")
@register_dataset("cityscapes-val", folder="cityscapes", frames=500, download=DOWNLOAD,
                  split="val")
class Cityscapes(FileDataset):
    """One Cityscapes split; ``semantic`` = trainIds, ``ood`` = 0 on labelled pixels."""

    layout = (
        "<root>/leftImg8bit/<split>/<city>/<id>_leftImg8bit.png + "
        "<root>/gtFine/<split>/<city>/<id>_gtFine_labelIds.png (or _gtFine_labelTrainIds.png)"
    )
    suffixes = {"_gtFine_labelTrainIds.png": TRAIN_IDS, "_gtFine_labelIds.png": LABEL_IDS_TO_TRAIN}

    def __init__(self, root: str | Path, split: str = "train") -> None:
        self.split = split
        super().__init__(root)

    def list_frames(self) -> list[Frame]:
        pairs = paired_files(
            self.root, "leftImg8bit", "gtFine", self.split, tuple(self.suffixes), self.layout
        )
        return require_labels(pairs, self.root, "gtFine", self.split, "_gtFine_labelIds.png")

    def convert(self, label: np.ndarray, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        table = next(t for s, t in self.suffixes.items() if frame.label.name.endswith(s))
        semantic = table(label, frame.label)
        return inlier_where_labelled(semantic), semantic
