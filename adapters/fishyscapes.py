"""Fishyscapes validation sets: Lost & Found (``fs-laf-val``) and Static (``fs-static-val``).

Neither release ships its images. FS L&F gives ``<NNNN>_<LAF id>_labels.png`` masks for Lost and
Found frames; FS Static gives ``<NNNN>_<city>_<seq>_<frame>_rgb.npz`` overlays (key ``rgb``) that
are added to Cityscapes val images with integer addition and clipping (not uint8 wrap-around).
Masks are used as released: 0 in-distribution, 1 anomaly, 255 void.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ood_bench.errors import DataNotFoundError, OodBenchError

from .base import register_dataset
from .files import FileDataset, Frame, missing_files_error
from .io import read_image, read_npz_array
from .labels import BINARY

HOST = "http://robotics.ethz.ch/~asl-datasets/Fishyscapes/"
LAF_LABEL = re.compile(r"(\d+)_((\d{2}_.+)_\d{6}_\d{6})_labels\.png")
STATIC_OVERLAY = re.compile(r"(\d+)_(([^_]+)_\d{6}_\d{6})_rgb\.npz")
LAF_SPLITS = ("train", "test")


def _sibling_or(root: Path, option: str | Path | None, folder: str) -> Path:
    """``option`` if given, else the ``folder`` next to ``root`` (both under the data root)."""
    return Path(option) if option is not None else root.parent / folder


@register_dataset(
    "fs-laf-val", folder="fishyscapes_lostandfound", frames=100,
    download=f"{HOST}fishyscapes_lostandfound.zip (masks) + Lost and Found leftImg8bit (images)",
)
class FishyscapesLostAndFound(FileDataset):
    """The 100 public FS L&F validation frames; images come from ``laf_root``
    (default: the ``lostandfound`` folder beside the root)."""

    layout = (
        "<root>/<NNNN>_<LAF id>_labels.png with Lost and Found images at "
        "<laf_root>/leftImg8bit/{train,test}/<NN_scene>/<LAF id>_leftImg8bit.png"
    )

    def __init__(self, root: str | Path, laf_root: str | Path | None = None) -> None:
        self.laf_root = _sibling_or(Path(root), laf_root, "lostandfound")
        super().__init__(root)

    def list_frames(self) -> list[Frame]:
        labels = [(LAF_LABEL.fullmatch(p.name), p) for p in sorted(self.root.glob("*_labels.png"))]
        if labels and not (self.laf_root / "leftImg8bit").is_dir():
            raise DataNotFoundError(
                f"Lost and Found images not found: missing folder "
                f"{str(self.laf_root / 'leftImg8bit')!r} (pass laf_root=...); expected the layout "
                f"{self.layout}"
            )
        frames, missing = [], []
        for match, label in labels:
            if match is None:
                raise OodBenchError(
                    f"{str(label)!r} is not named <NNNN>_<NN_scene>_<seq>_<frame>_labels.png"
                )
            laf_id, scene = match.group(2), match.group(3)
            candidates = [
                self.laf_root / "leftImg8bit" / s / scene / f"{laf_id}_leftImg8bit.png"
                for s in LAF_SPLITS
            ]
            image = next((c for c in candidates if c.is_file()), None)
            if image is None:
                missing.append((label, candidates[0]))
            else:
                frames.append(Frame(label.name[: -len("_labels.png")], image, label))
        if missing:
            raise missing_files_error(missing, "Lost and Found image")
        return frames

    def convert(self, label: np.ndarray, frame: Frame) -> tuple[np.ndarray, None]:
        return BINARY(label, frame.label), None


@register_dataset(
    "fs-static-val", folder="fishyscapes_static", frames=30,
    download=f"{HOST}fs_val_v3.zip (overlays and masks) + Cityscapes leftImg8bit val (images)",
)
class FishyscapesStatic(FileDataset):
    """The 30 FS Static validation frames: Cityscapes val + overlay, clipped to 0..255.

    Base images come from ``cityscapes_root`` (default: the ``cityscapes`` folder beside the
    root).
    """

    layout = (
        "<root>/<NNNN>_<city>_<seq>_<frame>_rgb.npz + <root>/<NNNN>_<city>_<seq>_<frame>"
        "_labels.png with <cityscapes_root>/leftImg8bit/val/<city>/<city>_<seq>_<frame>"
        "_leftImg8bit.png"
    )

    def __init__(self, root: str | Path, cityscapes_root: str | Path | None = None) -> None:
        self.cityscapes_root = _sibling_or(Path(root), cityscapes_root, "cityscapes")
        super().__init__(root)

    def list_frames(self) -> list[Frame]:
        frames, missing = [], []
        for overlay in sorted(self.root.glob("*_rgb.npz")):
            match = STATIC_OVERLAY.fullmatch(overlay.name)
            if match is None:
                raise OodBenchError(
                    f"{str(overlay)!r} is not named <NNNN>_<city>_<seq>_<frame>_rgb.npz"
                )
            frame_id, city = match.group(2), match.group(3)
            name = overlay.name[: -len("_rgb.npz")]
            label = overlay.with_name(f"{name}_labels.png")
            base = (
                self.cityscapes_root / "leftImg8bit" / "val" / city / f"{frame_id}_leftImg8bit.png"
            )
            if not label.is_file():
                missing.append((overlay, label))
            elif not base.is_file():
                missing.append((overlay, base))
            else:
                frames.append(Frame(name, overlay, label, base=base))
        if missing:
            raise missing_files_error(missing, "_labels.png mask or Cityscapes val base image")
        return frames

    def read_image(self, frame: Frame) -> np.ndarray:
        base = read_image(frame.base)
        overlay = read_npz_array(frame.image, "rgb")
        if overlay.shape != base.shape:
            raise OodBenchError(
                f"overlay {str(frame.image)!r} has shape {overlay.shape}; expected the shape "
                f"{base.shape} of its base image {str(frame.base)!r}"
            )
        composite = base.astype(np.int32) + overlay.astype(np.int32)
        return np.clip(composite, 0, 255).astype(np.uint8)

    def convert(self, label: np.ndarray, frame: Frame) -> tuple[np.ndarray, None]:
        return BINARY(label, frame.label), None
