"""SegmentMeIfYouCan: RoadAnomaly21 (AnomalyTrack) and RoadObstacle21 (ObstacleTrack).

Both archives unpack to ``images/<fid>.jpg|.webp`` and
``labels_masks/<fid>_labels_semantic.png`` (0 in, 1 anomaly/obstacle, 255 void; the
``_labels_semantic_color.png`` visualisations are skipped). Labels are public only for the
validation frames; the other frames come with ``ood=None`` and serve to produce submissions.
Frame ids may contain dots (``snowstorm1_00_16_02.578``): only the extension is stripped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ood_bench.errors import OodBenchError

from .base import register_dataset
from .files import FileDataset, Frame, require_folder
from .io import image_files
from .labels import BINARY

LABEL_SUFFIX = "_labels_semantic.png"
RA21_DOWNLOAD = (
    "https://zenodo.org/record/5270237/files/dataset_AnomalyTrack.zip (segmentmeifyoucan.com)"
)
RO21_DOWNLOAD = (
    "https://zenodo.org/record/5281633/files/dataset_ObstacleTrack.zip (segmentmeifyoucan.com)"
)
#: RoadObstacle21 scenes (the id part before the first ``_``) outside the leaderboard test split.
RO21_NIGHT, RO21_SNOW, VALIDATION = {"driveway"}, {"snowstorm1", "snowstorm2"}, "validation"
RO21_DOMAINS = {**dict.fromkeys(RO21_NIGHT, "night"), **dict.fromkeys(RO21_SNOW, "snow")}


def _ra21_subset(fid: str, subset: str) -> bool:
    is_val = fid.startswith(VALIDATION)
    return subset == "all" or (subset == "val") == is_val


def _ro21_subset(fid: str, subset: str) -> bool:
    scene = fid.split("_", 1)[0]
    return {
        "all": True,
        "val": scene == VALIDATION,
        "test": scene not in RO21_NIGHT | RO21_SNOW | {VALIDATION},
        "night": scene in RO21_NIGHT,
        "snowstorm": scene in RO21_SNOW,
    }[subset]


@register_dataset("smiyc-ra21", folder="dataset_AnomalyTrack", frames=110,
                  download=RA21_DOWNLOAD, track="anomaly", subset="all")
@register_dataset("smiyc-ra21-val", folder="dataset_AnomalyTrack", frames=10,
                  download=RA21_DOWNLOAD, track="anomaly", subset="val")
@register_dataset("smiyc-ra21-test", folder="dataset_AnomalyTrack", frames=100,
                  download=RA21_DOWNLOAD, track="anomaly", subset="test")
@register_dataset("smiyc-ro21", folder="dataset_ObstacleTrack", frames=442,
                  download=RO21_DOWNLOAD, track="obstacle", subset="all")
@register_dataset("smiyc-ro21-val", folder="dataset_ObstacleTrack", frames=30,
                  download=RO21_DOWNLOAD, track="obstacle", subset="val")
@register_dataset("smiyc-ro21-test", folder="dataset_ObstacleTrack", frames=327,
                  download=RO21_DOWNLOAD, track="obstacle", subset="test")
@register_dataset("smiyc-ro21-night", folder="dataset_ObstacleTrack", frames=30,
                  download=RO21_DOWNLOAD, track="obstacle", subset="night")
@register_dataset("smiyc-ro21-snowstorm", folder="dataset_ObstacleTrack", frames=55,
                  download=RO21_DOWNLOAD, track="obstacle", subset="snowstorm")
class SegmentMeIfYouCan(FileDataset):
    """One SMIYC track (``"anomaly"`` = RA21, ``"obstacle"`` = RO21) and ``subset``.

    Subsets: ``all``; ``val`` (the ``validation*`` frames that have a label file, as the
    MultiShiftSeg loader does: RO21 validation ids without labels exist in some copies; a
    missing label shows up as a frame-count mismatch in ``oodbench datasets check``); ``test``
    (the leaderboard frames); RO21 also ``night`` (scene ``driveway``) and ``snowstorm``
    (``snowstorm1/2``), whose ``domain`` is ``"night"`` / ``"snow"``.
    """

    layout = "<root>/images/<fid>.jpg|.webp + <root>/labels_masks/<fid>_labels_semantic.png"

    def __init__(self, root: str | Path, track: str = "anomaly", subset: str = "all") -> None:
        if track not in ("anomaly", "obstacle"):
            raise OodBenchError(f"track={track!r}; expected 'anomaly' or 'obstacle'")
        self.select = _ra21_subset if track == "anomaly" else _ro21_subset
        self.domains = RO21_DOMAINS if track == "obstacle" else {}
        subsets = ("all", "val", "test") + (("night", "snowstorm") if track == "obstacle" else ())
        if subset not in subsets:
            raise OodBenchError(f"subset={subset!r}; expected one of {', '.join(subsets)}")
        self.subset = subset
        super().__init__(root)

    def list_frames(self) -> list[Frame]:
        images = require_folder(self.root / "images", self.layout)
        labels = require_folder(self.root / "labels_masks", self.layout)
        frames = []
        for image in image_files(images):
            fid = image.stem
            if not self.select(fid, self.subset):
                continue
            label = labels / f"{fid}{LABEL_SUFFIX}"
            if not label.is_file():
                if self.subset == "val":  # as MultiShiftSeg: validation = the labelled frames
                    continue
                label = None
            frames.append(Frame(fid, image, label, self.domains.get(fid.split("_", 1)[0])))
        return frames

    def convert(self, label: np.ndarray, frame: Frame) -> tuple[np.ndarray, None]:
        return BINARY(label, frame.label), None
