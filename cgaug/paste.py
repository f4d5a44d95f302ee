"""Cut-and-paste of a novel object onto a Cityscapes training label map (``paste_on_road``),
and the Cityscapes → ADE20K palette conversion the segmentation ControlNet expects.

Geometry (at the 1024×2048 reference, every length scaled by ``label height / 1024``):

* the object mask is cropped to its bounding box and resized (nearest) so that its longer side
  becomes ``clamp(longer side, 200, 500)`` — the native size in reference pixels, clamped;
* it is centred on a random road pixel at least ``margin`` pixels from every border; the
  margin starts at 150 and shrinks in 10 px steps down to 10 when no road pixel qualifies;
  with no qualifying road pixel at all nothing is pasted (``None``);
* parts falling outside the frame are cut; the object's pixels get label 254.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ood_bench.adapters.base import OUTLIER_EXPOSURE, VOID
from ood_bench.errors import OodBenchError

from .ade20k import ADE20K_PALETTE, ade20k_index
from .sources import NovelObject

ROAD = 0
REFERENCE_HEIGHT = 1024

#: ADE20K class of each Cityscapes trainId (the reference's ``Cityscapes_to_ADE20k``).
CITYSCAPES_TO_ADE20K: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "signboard",
    "tree", "grass", "sky", "person", "person", "car", "truck", "bus", "bus", "bicycle",
    "bicycle",
)  # fmt: skip


@dataclass(frozen=True)
class PasteConfig:
    """Sizes in pixels at the 1024-row reference resolution."""

    min_side: float = 200
    max_side: float = 500
    margin: float = 150
    margin_step: float = 10
    margin_floor: float = 10


#: The paper's geometry.
DEFAULT_PASTE = PasteConfig()


@dataclass
class Pasted:
    """A label map (trainIds, 254 on the object), the object mask, its class, centre (row,
    column) and part codes (synthetic objects; 0 elsewhere)."""

    label: np.ndarray
    mask: np.ndarray
    object_class: str
    centre: tuple[int, int]
    part: np.ndarray | None = None


def resize_object(obj: NovelObject, scale: float, config: PasteConfig = DEFAULT_PASTE
                  ) -> NovelObject:
    """Crop to the bounding box and resize (nearest) so the longer side is the clamped native
    size times ``scale``."""
    rows, cols = np.nonzero(obj.mask)
    if rows.size == 0:
        raise OodBenchError(f"the {obj.name!r} object mask is empty")
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    mask = obj.mask[box]
    long_side = max(mask.shape)
    target = np.clip(long_side, config.min_side, config.max_side) * scale
    factor = target / long_side
    size = (max(1, round(mask.shape[1] * factor)), max(1, round(mask.shape[0] * factor)))

    def nearest(array: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(array.astype(np.uint8)).resize(size, Image.NEAREST))

    part = None if obj.part is None else nearest(obj.part[box])
    return NovelObject(nearest(mask) > 0, obj.name, part)


def margins(scale: float, config: PasteConfig = DEFAULT_PASTE) -> list[float]:
    """The border margins tried in turn: 150, 140, ..., 10 (times ``scale``)."""
    steps = int(round((config.margin - config.margin_floor) / config.margin_step))
    return [(config.margin - k * config.margin_step) * scale for k in range(steps + 1)]


def road_centre(label: np.ndarray, rng: np.random.Generator, margin_list: list[float]
                ) -> tuple[int, int] | None:
    """A random road pixel at least ``margin`` from every border, for the first margin of
    ``margin_list`` that leaves any; ``None`` if none does."""
    rows, cols = np.nonzero(label == ROAD)
    if rows.size == 0:
        return None
    height, width = label.shape
    border = np.minimum.reduce([rows, height - 1 - rows, cols, width - 1 - cols])
    for margin in margin_list:
        ok = np.flatnonzero(border >= margin)
        if ok.size:
            pick = ok[rng.integers(ok.size)]
            return int(rows[pick]), int(cols[pick])
    return None


def paste_on_road(label: np.ndarray, obj: NovelObject, rng: np.random.Generator,
                  config: PasteConfig = DEFAULT_PASTE) -> Pasted | None:
    """Paste ``obj`` centred on a random road pixel of ``label`` (see the module docstring)."""
    if label.ndim != 2 or label.dtype != np.uint8:
        raise OodBenchError(f"label must be an H×W uint8 trainId map, got {label.dtype} "
                            f"{label.shape}")
    scale = label.shape[0] / REFERENCE_HEIGHT
    centre = road_centre(label, rng, margins(scale, config))
    if centre is None:
        return None
    obj = resize_object(obj, scale, config)
    h, w = obj.mask.shape
    top, left = centre[0] - h // 2, centre[1] - w // 2
    height, width = label.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, height), min(left + w, width)
    window = obj.mask[y0 - top:y1 - top, x0 - left:x1 - left]
    mask = np.zeros(label.shape, bool)
    mask[y0:y1, x0:x1] = window
    out = label.copy()
    out[mask] = OUTLIER_EXPOSURE
    part = None
    if obj.part is not None:
        part = np.zeros(label.shape, np.uint8)
        part[y0:y1, x0:x1] = np.where(window, obj.part[y0 - top:y1 - top, x0 - left:x1 - left],
                                      0)
    return Pasted(out, mask, obj.name, centre, part)


def ade20k_colour_map(label: np.ndarray, object_class: str) -> np.ndarray:
    """Paint a trainId map (254 = the pasted object) in the ADE20K palette (H×W×3 uint8).

    Void pixels (255: unlabeled, ego vehicle, rectification border, out of roi, static...) stay
    black — "no condition" for the ControlNet — instead of becoming road as in the reference,
    whose colour-based loop maps every black Cityscapes pixel to road.
    """
    table = np.zeros((256, 3), np.uint8)
    for train_id, ade_name in enumerate(CITYSCAPES_TO_ADE20K):
        table[train_id] = ADE20K_PALETTE[ade20k_index(ade_name)]
    table[OUTLIER_EXPOSURE] = ADE20K_PALETTE[ade20k_index(object_class)]
    known = np.zeros(256, bool)
    known[[*range(len(CITYSCAPES_TO_ADE20K)), OUTLIER_EXPOSURE, VOID]] = True
    unexpected = np.setdiff1d(np.unique(label), np.flatnonzero(known))
    if unexpected.size:
        raise OodBenchError(f"label holds values {unexpected.tolist()} that are neither "
                            "trainIds 0-18, 254 nor 255")
    return table[label]
