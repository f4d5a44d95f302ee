"""ACDC-POC (de Jorge et al., ECCV 2024): objects inpainted into ACDC val scenes.

The release (``POC_Datasets/data.zip``, folder ``POC_ACDC_VAL``) ships only differences:
``rgb_anon_trainvaltest/rgb_anon/<cond>/val/<seq>/<stem>_rgb_anon_<prompt>_<n>.npz`` (key
``img``) = POC image − ACDC image in uint8 arithmetic. The image is rebuilt by uint8 wrap-around
addition onto the ACDC image ``<stem>_rgb_anon.png`` (looked for beside the ``.npz`` and under
``acdc_root``), once, into an atomically written PNG cache. Already rebuilt ``.png`` frames are
read directly. Labels ``<name>.png`` are ACDC/Cityscapes labelIds with OOD objects 100–124, under
``gt_trainval/gt/…`` or (a path quirk of the release script) ``rgb_anon_trainvaltest/gt/…``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ood_bench.cache import cache_dir, config_hash
from ood_bench.errors import OodBenchError

from .base import VOID, register_dataset
from .files import FileDataset, Frame, missing_files_error, require_folder
from .io import read_image, read_npz_array, write_png
from .labels import CITYSCAPES_LABEL_IDS, CITYSCAPES_TRAIN_IDS, ood_map, train_id_map

DOWNLOAD = (
    "https://download.europe.naverlabs.com/POC_Datasets/data.zip (folder POC_ACDC_VAL) + ACDC "
    "rgb_anon_trainvaltest.zip from https://acdc.vision.ee.ethz.ch (base images)"
)
IMAGES = Path("rgb_anon_trainvaltest", "rgb_anon")
LABEL_DIRS = (Path("gt_trainval", "gt"), Path("rgb_anon_trainvaltest", "gt"))
BASE_SUFFIX = "_rgb_anon"
OOD_IDS = range(100, 125)
LEGAL = [*CITYSCAPES_LABEL_IDS, *OOD_IDS, VOID]
DESCRIBE = "Cityscapes labelIds 0..33, OOD objects 100..124 or 255"
#: ``void="multishiftseg"``: id 0 void, ids > 33 OOD, every other id in-distribution (the
#: MultiShiftSeg evaluation). ``void="poc"``: the 19 train classes in, 100–124 OOD, rest void.
OOD_TABLES = {
    "multishiftseg": ood_map(range(1, 34), OOD_IDS, [0, VOID], DESCRIBE),
    "poc": ood_map(
        CITYSCAPES_TRAIN_IDS,
        OOD_IDS,
        [i for i in (*CITYSCAPES_LABEL_IDS, VOID) if i not in CITYSCAPES_TRAIN_IDS],
        DESCRIBE,
    ),
}
SEMANTIC = train_id_map(LEGAL, DESCRIBE)


@register_dataset("acdc-poc", folder=("POC_ACDC_VAL", "acdc_poc"), frames=200, download=DOWNLOAD)
class ACDCPOC(FileDataset):
    """ACDC-POC val; ``domain`` is the ACDC condition (fog, night, rain, snow)."""

    layout = (
        "<root>/rgb_anon_trainvaltest/rgb_anon/<cond>/val/<seq>/<name>.npz (or rebuilt <name>.png)"
        " + <root>/gt_trainval/gt/<cond>/val/<seq>/<name>.png, with the ACDC base image "
        "<stem>_rgb_anon.png beside the .npz or under <acdc_root>/rgb_anon_trainvaltest/rgb_anon/"
    )

    def __init__(
        self, root: str | Path, void: str = "multishiftseg", acdc_root: str | Path | None = None
    ) -> None:
        if void not in OOD_TABLES:
            raise OodBenchError(f"void={void!r}; expected one of {', '.join(OOD_TABLES)}")
        self.ood_table = OOD_TABLES[void]
        self.acdc_root = None if acdc_root is None else Path(acdc_root)
        root = Path(root)
        self.cache = cache_dir("acdc-poc", config_hash({"root": str(root.resolve())}))
        super().__init__(root)

    def list_frames(self) -> list[Frame]:
        images = require_folder(self.root / IMAGES, self.layout)
        sources: dict[Path, Path] = {}
        for path in sorted(images.glob("*/val/*/*")):
            rebuilt = path.suffix == ".png" and not path.stem.endswith(BASE_SUFFIX)
            if path.suffix == ".npz" or rebuilt:
                relative = path.relative_to(images).with_suffix(".png")
                if rebuilt or relative not in sources:
                    sources[relative] = path
        frames, missing = [], []
        for relative, source in sources.items():
            label = self._label(relative)
            base = self._base(source) if source.suffix == ".npz" else None
            if label is None:
                missing.append((source, self.root / LABEL_DIRS[0] / relative))
            elif source.suffix == ".npz" and base is None:
                missing.append((source, source.with_name(_base_name(source))))
            else:
                frames.append(Frame(source.stem, source, label, relative.parts[0], base))
        if missing:
            raise missing_files_error(missing, "label or ACDC base image (pass acdc_root=...)")
        return frames

    def _label(self, relative: Path) -> Path | None:
        candidates = (self.root / d / relative for d in LABEL_DIRS)
        return next((c for c in candidates if c.is_file()), None)

    def _base(self, npz: Path) -> Path | None:
        name = _base_name(npz)
        candidates = [npz.with_name(name)]
        if self.acdc_root is not None:
            relative = npz.parent.relative_to(self.root / IMAGES) / name
            candidates += [self.acdc_root / d / relative for d in (IMAGES, Path("rgb_anon"))]
        return next((c for c in candidates if c.is_file()), None)

    def read_image(self, frame: Frame) -> np.ndarray:
        if frame.base is None:
            return read_image(frame.image)
        cached = self.cache / frame.image.relative_to(self.root / IMAGES).with_suffix(".png")
        if cached.is_file() and cached.stat().st_mtime_ns >= frame.image.stat().st_mtime_ns:
            return read_image(cached)
        image = rebuild(read_image(frame.base), read_npz_array(frame.image, "img"), frame.image)
        write_png(cached, image)
        return image

    def convert(self, label: np.ndarray, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        return self.ood_table(label, frame.label), SEMANTIC(label, frame.label)


def _base_name(npz: Path) -> str:
    """``<stem>_rgb_anon_<prompt>_<n>.npz`` → ``<stem>_rgb_anon.png`` (the release's rule)."""
    stem = npz.stem.split(f"{BASE_SUFFIX}_", 1)[0]
    return f"{stem}{BASE_SUFFIX}.png"


def rebuild(base: np.ndarray, difference: np.ndarray, source: Path) -> np.ndarray:
    """POC image = ``base + difference`` modulo 256 (how the differences were computed)."""
    if difference.shape != base.shape or not np.issubdtype(difference.dtype, np.integer):
        raise OodBenchError(
            f"{str(source)!r} holds a {difference.dtype} array of shape {difference.shape}; "
            f"expected an integer array of the base image's shape {base.shape}"
        )
    if difference.dtype == np.uint8:
        return base + difference
    return ((base.astype(np.int64) + difference) % 256).astype(np.uint8)
