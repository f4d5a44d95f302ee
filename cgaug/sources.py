"""Sources of novel objects (classes absent from Cityscapes) to paste onto road scenes.

* :class:`SceneParsingObjects` — ADE20K SceneParsing (``ADEChallengeData2016``), annotations with
  the 150 class ids (value = class index + 1, 0 = other). An image is drawn at random, one of the
  configured novel classes present in it is chosen, and the object is *all* pixels of that class
  (as in the paper's ``paste_anomalies_ade``).
* :class:`FullADE20KObjects` — the full ADE20K release the paper used (``ADE20K_2021_17_01``,
  ``*_seg.png`` with ids ``R / 10 * 256 + G``), mapped to SceneParsing ids by a given table.
* :class:`SyntheticObjects` — the synthetic world's outlier-exposure family (ball, chair,
  barrel, bag), rasterised from its shape functions with their sub-surface parts.

The paper's lists of novel ADE20K classes (82 train / 32 val, ``CGAug/static_data/
ADE_ood_class_idx.pkl`` and ``ADE_ood_class_idx_val.pkl`` in ``gaozhitong/MultiShiftSeg``) are
binary pickles whose contents are not recorded in our research notes, so the class list is a
required argument here (see the README part for how to extract it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ood_bench.adapters.synthetic.objects import OUTLIER_EXPOSURE_OBJECTS, ObjectKind
from ood_bench.errors import DataNotFoundError, OodBenchError

from .ade20k import ADE20K_CLASSES, ade20k_index

#: Cityscapes-like ADE20K classes that must never be used as novel objects.
CITYSCAPES_OVERLAP = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "signboard",
    "tree", "grass", "sky", "person", "car", "bus", "truck", "bicycle", "minibike", "van",
    "streetlight", "earth", "land", "plant", "palm", "railing", "bannister", "skyscraper", "house",
)  # fmt: skip


@dataclass
class NovelObject:
    """An object mask (H×W bool, cropped or not), its class name and optional part codes."""

    mask: np.ndarray
    name: str
    part: np.ndarray | None = None


class ObjectSource:
    """Draws random :class:`NovelObject` s; ``classes`` lists the names it can return."""

    classes: tuple[str, ...] = ()

    def draw(self, rng: np.random.Generator) -> NovelObject:
        raise NotImplementedError


def parse_class_list(classes: Sequence[str | int]) -> tuple[str, ...]:
    """Validated ADE20K class names from names or 1-based SceneParsing ids."""
    names = []
    for entry in classes:
        if isinstance(entry, int) or str(entry).strip().isdigit():
            index = int(entry) - 1
            if not 0 <= index < len(ADE20K_CLASSES):
                raise OodBenchError(f"ADE20K class id {entry!r} is not in 1..150")
            name = ADE20K_CLASSES[index]
        else:
            name = ADE20K_CLASSES[ade20k_index(str(entry).strip())]
        if name in CITYSCAPES_OVERLAP:
            raise OodBenchError(f"ADE20K class {name!r} overlaps a Cityscapes class and cannot "
                                "be a novel object")
        names.append(name)
    if not names:
        raise OodBenchError("the novel-object class list is empty")
    return tuple(dict.fromkeys(names))


class AnnotatedObjects(ObjectSource):
    """Objects cut from annotated images: subclasses list ``files`` and decode one into a map of
    1-based SceneParsing class ids (0 = other)."""

    def __init__(self, files: list[Path], classes: Sequence[str | int], where: str,
                 max_tries: int = 1000) -> None:
        if not files:
            raise DataNotFoundError(f"no ADE20K annotations under {where}")
        self.files = files
        self.classes = parse_class_list(classes)
        self._ids = np.array([ade20k_index(name) + 1 for name in self.classes])
        self.max_tries = max_tries

    def class_ids(self, path: Path) -> np.ndarray:
        raise NotImplementedError

    def draw(self, rng: np.random.Generator) -> NovelObject:
        for _ in range(self.max_tries):
            annotation = self.class_ids(self.files[int(rng.integers(len(self.files)))])
            present = self._ids[np.isin(self._ids, annotation)]
            if present.size:
                class_id = int(present[rng.integers(present.size)])
                return NovelObject(annotation == class_id, ADE20K_CLASSES[class_id - 1])
        raise OodBenchError(f"none of {self.max_tries} random ADE20K annotations holds one of the "
                            f"classes {', '.join(self.classes)}")


def _split(split: str) -> str:
    if split not in ("training", "validation"):
        raise OodBenchError(f"split must be 'training' or 'validation', got {split!r}")
    return split


class SceneParsingObjects(AnnotatedObjects):
    """Novel objects from ADE20K SceneParsing under ``root``::

        root/annotations/<split>/ADE_<split>_<id>.png   (uint8, class index + 1, 0 = other)

    (``split`` is ``training`` or ``validation``; ``root`` is the ``ADEChallengeData2016``
    folder from http://sceneparsing.csail.mit.edu). ``classes``: novel class names or 1-based
    ids. ``max_tries`` bounds the search for an image holding one of them.
    """

    def __init__(self, root: str | Path, classes: Sequence[str | int],
                 split: str = "training", max_tries: int = 1000) -> None:
        folder = Path(root) / "annotations" / _split(split)
        super().__init__(sorted(folder.glob("*.png")), classes,
                         f"{str(folder)!r}: expected the SceneParsing layout ADEChallengeData2016/"
                         "annotations/{training,validation}/*.png "
                         "(http://sceneparsing.csail.mit.edu)", max_tries)

    def class_ids(self, path: Path) -> np.ndarray:
        annotation = np.asarray(Image.open(path))
        if annotation.ndim != 2:
            raise OodBenchError(f"ADE20K annotation {str(path)!r} is not a single-channel "
                                "class-id PNG")
        return annotation


def decode_full_ade20k(seg: np.ndarray) -> np.ndarray:
    """Class ids of a full-ADE20K ``*_seg.png`` (H×W×3 RGB): ``R / 10 * 256 + G``."""
    if seg.ndim != 3 or seg.shape[2] < 3:
        raise OodBenchError(f"a full-ADE20K _seg.png must be RGB, got shape {seg.shape}")
    return (seg[..., 0].astype(np.int64) // 10) * 256 + seg[..., 1].astype(np.int64)


class FullADE20KObjects(AnnotatedObjects):
    """Novel objects from the full ADE20K release (the paper's source) under ``root``::

        root/images/ADE/<split>/<scene>/.../ADE_<split>_<id>.jpg and ..._seg.png

    (``root`` = ``ADE20K_2021_17_01`` from https://groups.csail.mit.edu/vision/datasets/ADE20K).
    Full class ids (decoded from ``_seg.png``) are mapped to 1-based SceneParsing ids with
    ``mapping`` ({full id: SceneParsing id}); the reference ships its mapping as
    ``CGAug/static_data/ADE_class_mapping.pkl``, which our notes do not record, so it is a
    required input. Unmapped ids count as "other".
    """

    def __init__(self, root: str | Path, classes: Sequence[str | int],
                 mapping: dict[int, int], split: str = "training",
                 max_tries: int = 1000) -> None:
        folder = Path(root) / "images" / "ADE" / _split(split)
        super().__init__(sorted(folder.rglob("*_seg.png")), classes,
                         f"{str(folder)!r}: expected the full ADE20K layout ADE20K_2021_17_01/"
                         "images/ADE/{training,validation}/<scene>/*_seg.png", max_tries)
        bad = {k: v for k, v in mapping.items() if not 0 <= int(v) <= len(ADE20K_CLASSES)}
        if bad:
            raise OodBenchError(f"mapping targets must be SceneParsing ids 0..150, got {bad}")
        self.mapping = {int(k): int(v) for k, v in mapping.items()}

    def class_ids(self, path: Path) -> np.ndarray:
        full = decode_full_ade20k(np.asarray(Image.open(path).convert("RGB")))
        values, inverse = np.unique(full, return_inverse=True)
        mapped = np.array([self.mapping.get(int(v), 0) for v in values], np.uint8)
        return mapped[inverse].reshape(full.shape)


class SyntheticObjects(ObjectSource):
    """The synthetic outlier-exposure family, rendered as masks with part codes.

    The longer side is drawn from ``long_side`` (pixels at the 1024×2048 reference scale; the
    paste step then clamps and rescales it like an ADE20K mask); the aspect ratio follows the
    kind's metric width/height ranges.
    """

    def __init__(self, kinds: Sequence[ObjectKind] = OUTLIER_EXPOSURE_OBJECTS,
                 long_side: tuple[int, int] = (120, 600)) -> None:
        self.kinds = tuple(kinds)
        self.classes = tuple(kind.name for kind in self.kinds)
        self.long_side = long_side

    def draw(self, rng: np.random.Generator) -> NovelObject:
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        width_m, height_m = rng.uniform(*kind.width), rng.uniform(*kind.height)
        long_px = int(rng.integers(self.long_side[0], self.long_side[1] + 1))
        pixels_per_metre = long_px / max(width_m, height_m)
        rows = max(1, round(height_m * pixels_per_metre))
        cols = max(1, round(width_m * pixels_per_metre))
        px = ((np.arange(cols) + 0.5) / pixels_per_metre - width_m / 2)[None, :]
        py = (height_m - (np.arange(rows) + 0.5) / pixels_per_metre)[:, None]
        px, py = np.broadcast_arrays(px, py)
        mask, part = kind.shape(px, py, width_m, height_m, rng)
        part = np.broadcast_to(part, mask.shape).astype(np.uint8)
        return NovelObject(np.asarray(mask, bool), kind.name, np.where(mask, part, 0))
