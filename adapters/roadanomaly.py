"""RoadAnomaly (Lis et al., ICCV 2019): 60 road scenes with anomalies, test only.

Two layouts are detected automatically:

* the official release (``RoadAnomaly_jpg.zip``, or ``RoadAnomaly`` with WebP frames):
  ``frame_list.json``, ``frames/<name>.jpg|.webp`` and
  ``frames/<name>.labels/labels_semantic.png`` with 0 = background and **2 = anomaly** (no void);
* the widely used re-packaged copy (Synboost ``data_processed``, used by PEBAL/RPL/MultiShiftSeg):
  ``original/<name>.jpg`` and ``labels/<name>.png`` already 0/1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ood_bench.errors import OodBenchError

from .base import register_dataset
from .files import FileDataset, Frame, missing_files_error, require_folder
from .io import IMAGE_SUFFIXES, image_files
from .labels import ood_map

DOWNLOAD = (
    "https://datasets-cvlab.epfl.ch/2019-road-anomaly/RoadAnomaly_jpg.zip "
    "(EPFL CVLab road-anomaly page); unpack so the root holds frame_list.json and frames/"
)
OFFICIAL = ood_map([0], [2], [], "0 (background) or 2 (anomaly) in labels_semantic.png")
REPACKAGED = ood_map([0], [1], [], "0 (in-distribution) or 1 (anomaly)")


@register_dataset(
    "roadanomaly", folder=("RoadAnomaly_jpg", "RoadAnomaly", "road_anomaly"), frames=60,
    download=DOWNLOAD,
)
class RoadAnomaly(FileDataset):
    """RoadAnomaly in either layout; ``ood`` = 1 on anomalies, 0 elsewhere (no void)."""

    layout = (
        "<root>/frame_list.json + <root>/frames/<name>.jpg|.webp + "
        "<root>/frames/<name>.labels/labels_semantic.png, or <root>/original/<name>.jpg + "
        "<root>/labels/<name>.png"
    )

    def list_frames(self) -> list[Frame]:
        if (self.root / "frame_list.json").is_file():
            self._table = OFFICIAL
            return self._official_frames()
        if (self.root / "original").is_dir():
            self._table = REPACKAGED
            return self._repackaged_frames()
        raise OodBenchError(
            f"{str(self.root)!r} holds neither frame_list.json nor original/; "
            f"expected the layout {self.layout}"
        )

    def _official_frames(self) -> list[Frame]:
        listing = self.root / "frame_list.json"
        frames_dir = require_folder(self.root / "frames", self.layout)
        try:
            names = json.loads(listing.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise OodBenchError(f"cannot read {str(listing)!r} ({error})") from None
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise OodBenchError(f"{str(listing)!r} must be a JSON list of image file names")
        frames, missing = [], []
        for entry in names:
            stem = _strip_image_suffix(entry)
            image = _find_image(frames_dir, stem)
            label = frames_dir / f"{stem}.labels" / "labels_semantic.png"
            if image is None:
                missing.append((frames_dir / entry, frames_dir / entry))
            elif not label.is_file():
                missing.append((image, label))
            else:
                frames.append(Frame(stem, image, label))
        if missing:
            raise missing_files_error(missing, "image or labels_semantic.png")
        return frames

    def _repackaged_frames(self) -> list[Frame]:
        labels_dir = require_folder(self.root / "labels", self.layout)
        frames, missing = [], []
        for image in image_files(self.root / "original"):
            label = labels_dir / f"{image.stem}.png"
            if label.is_file():
                frames.append(Frame(image.stem, image, label))
            else:
                missing.append((image, label))
        if missing:
            raise missing_files_error(missing, "label in labels/")
        return frames

    def convert(self, label: np.ndarray, frame: Frame) -> tuple[np.ndarray, None]:
        return self._table(label, frame.label), None


def _strip_image_suffix(name: str) -> str:
    suffix = Path(name).suffix
    return name[: -len(suffix)] if suffix.lower() in IMAGE_SUFFIXES else name


def _find_image(folder: Path, stem: str) -> Path | None:
    return next(
        (folder / f"{stem}{s}" for s in IMAGE_SUFFIXES if (folder / f"{stem}{s}").is_file()), None
    )
