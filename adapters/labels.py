"""Label conversions: raw ids on disk → ``ood`` (0/1/255) and ``semantic`` (trainIds) maps.

A ``LabelMap`` is a lookup table that also knows which raw ids are legal, so a label file with
an id the dataset never uses fails loudly instead of being silently mapped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ood_bench.errors import OodBenchError

from .base import ID, OOD, VOID

#: Cityscapes labelId → trainId for the 19 evaluated classes (cityscapesScripts ``labels.py``);
#: every other labelId is void.
CITYSCAPES_TRAIN_IDS: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
#: Marks raw ids a ``LabelMap`` does not accept (above every uint8 output value).
ILLEGAL = 256
#: The Cityscapes labelIds (0 unlabeled … 33 bicycle); license plate (-1) is never drawn.
CITYSCAPES_LABEL_IDS = range(34)


class LabelMap:
    """Converts raw label ids with a 256-entry lookup table, rejecting ids not in ``mapping``.

    ``describe`` is the human-readable list of legal values used in error messages.
    """

    def __init__(self, mapping: Mapping[int, int], describe: str) -> None:
        # One uint16 table: the converted value in the low byte, ILLEGAL set for unknown ids, so
        # a single np.take both converts and flags (4× faster than bincount + uint8 lookup).
        self.lut = np.full(256, ILLEGAL, np.uint16)
        for raw, value in mapping.items():
            self.lut[raw] = value
        self.describe = describe

    def __call__(self, raw: np.ndarray, path: str | Path) -> np.ndarray:
        """The converted H×W uint8 map of ``raw`` (read from ``path``, named in errors)."""
        if raw.ndim != 2:
            raise OodBenchError(f"{str(path)!r} has shape {raw.shape}; expected an H×W label map")
        if raw.dtype != np.uint8:
            if raw.size and (raw.min() < 0 or raw.max() > 255):
                raise OodBenchError(
                    f"{str(path)!r} holds label values outside 0..255 "
                    f"(min {raw.min()}, max {raw.max()}); expected {self.describe}"
                )
            raw = raw.astype(np.uint8)
        converted = np.take(self.lut, raw)
        if raw.size and converted.max() >= ILLEGAL:
            unexpected = np.unique(raw[converted >= ILLEGAL])
            shown = ", ".join(map(str, unexpected[:10])) + (" …" if unexpected.size > 10 else "")
            raise OodBenchError(
                f"{str(path)!r} holds unexpected label value(s) {shown}; expected {self.describe}"
            )
        return converted.astype(np.uint8)


def ood_map(
    inlier: Iterable[int], outlier: Iterable[int], void: Iterable[int], describe: str
) -> LabelMap:
    """A ``LabelMap`` sending ``inlier`` ids to 0, ``outlier`` ids to 1 and ``void`` ids to 255."""
    mapping = {raw: VOID for raw in void}
    mapping.update({raw: ID for raw in inlier})
    mapping.update({raw: OOD for raw in outlier})
    return LabelMap(mapping, describe)


def train_id_map(legal: Iterable[int], describe: str) -> LabelMap:
    """Cityscapes labelIds → trainIds: the 19 class ids to 0..18, every other ``legal`` id void."""
    mapping = {raw: VOID for raw in legal}
    mapping.update(CITYSCAPES_TRAIN_IDS)
    return LabelMap(mapping, describe)


#: Binary anomaly labels as released by SMIYC and Fishyscapes: 0 in, 1 anomaly, 255 void.
BINARY = ood_map([0], [1], [255], "0 (in-distribution), 1 (anomaly) or 255 (void)")
#: ``gtFine_labelTrainIds.png`` values: 0..18 and 255.
TRAIN_IDS = LabelMap(
    {**{i: i for i in range(19)}, VOID: VOID}, "Cityscapes trainIds 0..18 or 255 (void)"
)
#: ``gtFine_labelIds.png`` values → trainIds.
LABEL_IDS_TO_TRAIN = train_id_map(CITYSCAPES_LABEL_IDS, "Cityscapes labelIds 0..33")


def inlier_where_labelled(semantic: np.ndarray) -> np.ndarray:
    """``ood`` of an in-distribution frame: 0 wherever ``semantic`` is a class, void elsewhere."""
    return np.where(semantic == VOID, VOID, ID).astype(np.uint8)
