"""Lost and Found (Pinggera et al., IROS 2016): small road obstacles, Cityscapes-style layout.

``gtCoarse`` labelIds: 0 = void (off-road, ego vehicle, border), 1 = free road, 2–43 = object
classes. As in the SMIYC toolkit, every object id counts as an obstacle: 1 → 0, 2–43 → 1,
0 → 255, so the region of interest is the road.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import register_dataset
from .cityscapes import paired_files, require_labels
from .files import FileDataset, Frame
from .labels import ood_map

DOWNLOAD = (
    "Lost and Found leftImg8bit.zip + gtCoarse.zip (originally "
    "www.6d-vision.com/lostandfounddataset; the host is reported dead, use a mirror)"
)
LABEL_SUFFIX = "_gtCoarse_labelIds.png"
LAF_IDS = ood_map([1], range(2, 44), [0], "Lost and Found labelIds 0 (void), 1 (road), 2..43")


@register_dataset("lostandfound-test", folder="lostandfound", frames=1203, download=DOWNLOAD,
                  split="test")
@register_dataset("lostandfound-train", folder="lostandfound", frames=1036, download=DOWNLOAD,
                  split="train")
class LostAndFound(FileDataset):
    """One Lost and Found split with obstacle labels (``ood``); no ``semantic``."""

    layout = (
        "<root>/leftImg8bit/<split>/<NN_scene>/<id>_leftImg8bit.png + "
        "<root>/gtCoarse/<split>/<NN_scene>/<id>_gtCoarse_labelIds.png"
    )

    def __init__(self, root: str | Path, split: str = "test") -> None:
        self.split = split
        super().__init__(root)

    def list_frames(self) -> list[Frame]:
        pairs = paired_files(
            self.root, "leftImg8bit", "gtCoarse", self.split, (LABEL_SUFFIX,), self.layout
        )
        return require_labels(pairs, self.root, "gtCoarse", self.split, LABEL_SUFFIX)

    def convert(self, label: np.ndarray, frame: Frame) -> tuple[np.ndarray, None]:
        return LAF_IDS(label, frame.label), None
