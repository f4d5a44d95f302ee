"""MUAD (Franchi et al., BMVC 2022): synthetic driving scenes with OOD objects and weather.

Each split folder holds ``leftImg8bit/<id>_leftImg8bit.png`` and ``leftLabel/<id>_leftLabel.png``
with ids 0–18 = the Cityscapes train classes, 19 = animals, 20 = OOD objects, 21 / 255 =
unlabeled. Loaders disagree on which ids are OOD, so ``ood_ids`` is an option (default
``{19, 20}``, the MultiShiftSeg convention); ids 19/20 left out of it become void, 21 and 255
are always void, and ``semantic`` keeps ids 0–18.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ood_bench.errors import OodBenchError

from .base import NUM_CLASSES, VOID, register_dataset
from .files import FileDataset, Frame, missing_files_error, require_folder
from .labels import LabelMap, ood_map

DOWNLOAD = (
    "Hugging Face ENSTA-U2IS/MUAD (<split>.zip) or the official Google form linked from "
    "github.com/ENSTA-U2IS-AI/MUAD-Dataset"
)
IMAGE_SUFFIX, LABEL_SUFFIX = "_leftImg8bit.png", "_leftLabel.png"
MUAD_IDS = range(21)
UNLABELED = (21, VOID)
SEMANTIC = LabelMap(
    {**{i: i if i < NUM_CLASSES else VOID for i in MUAD_IDS}, **dict.fromkeys(UNLABELED, VOID)},
    "MUAD ids 0..21 or 255",
)
#: CLI name → (split folder names tried in order, expected frames, domain); the challenge split
#: lives in its own download (``MUAD_challenge/test_sets/test_OOD``).
SPLITS = {
    "train": (("train", "train2"), 3420, None),
    "val": (("val",), 492, None),
    "test-id": (("test_id",), 551, None),
    "test-ood": (("test_ood",), 1668, None),
    "test-id-low-adv": (("test_id_low_adv",), 605, "low-adv"),
    "test-id-high-adv": (("test_id_high_adv",), 602, "high-adv"),
    "test-ood-low-adv": (("test_ood_low_adv",), 1552, "low-adv"),
    "test-ood-high-adv": (("test_ood_high_adv",), 1421, "high-adv"),
    "challenge-test-ood": (("test_sets/test_OOD",), None, None),
}


def _register_splits(cls: type) -> type:
    for name, (_, frames, _) in SPLITS.items():
        folder = "MUAD_challenge" if name.startswith("challenge") else "MUAD"
        register_dataset(f"muad-{name}", folder=folder, frames=frames, download=DOWNLOAD,
                         split=name)(cls)
    return cls


@_register_splits
class MUAD(FileDataset):
    """One MUAD split; ``root`` is the folder holding the split folders."""

    layout = (
        "<root>/<split>/leftImg8bit/<id>_leftImg8bit.png + "
        "<root>/<split>/leftLabel/<id>_leftLabel.png"
    )

    def __init__(
        self, root: str | Path, split: str = "val", ood_ids: Iterable[int] = (19, 20)
    ) -> None:
        if split not in SPLITS:
            raise OodBenchError(f"split={split!r}; expected one of {', '.join(SPLITS)}")
        ood_ids = sorted({int(i) for i in ood_ids})
        if not ood_ids or not set(ood_ids) <= set(MUAD_IDS):
            raise OodBenchError(f"ood_ids={ood_ids}; expected a non-empty subset of 0..20")
        self.split = split
        self.ood_ids = ood_ids
        self.ood_table = ood_map(
            inlier=[i for i in range(NUM_CLASSES) if i not in ood_ids],
            outlier=ood_ids,
            void=[*UNLABELED, *(i for i in (19, 20) if i not in ood_ids)],
            describe="MUAD ids 0..21 or 255",
        )
        super().__init__(root)

    def list_frames(self) -> list[Frame]:
        folders, _, domain = SPLITS[self.split]
        split_dir = next((self.root / f for f in folders if (self.root / f).is_dir()), None)
        if split_dir is None:
            require_folder(self.root / folders[0], self.layout)
        images = require_folder(split_dir / "leftImg8bit", self.layout)
        labels = split_dir / "leftLabel"
        frames, missing = [], []
        for image in sorted(images.rglob(f"*{IMAGE_SUFFIX}")):
            fid = image.name[: -len(IMAGE_SUFFIX)]
            label = labels / image.parent.relative_to(images) / f"{fid}{LABEL_SUFFIX}"
            if label.is_file():
                frames.append(Frame(fid, image, label, domain))
            else:
                missing.append((image, label))
        if missing:
            raise missing_files_error(missing, "leftLabel")
        return frames

    def convert(self, label: np.ndarray, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        return self.ood_table(label, frame.label), SEMANTIC(label, frame.label)
