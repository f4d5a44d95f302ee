"""Outlier exposure (OE): objects cut from another image and pasted into training frames.

The Meta-OoD "mix_object" recipe, reused by PEBAL and RPL (``research/baselines.md`` §0.2):

1. take the bounding box of all object pixels of the source mask,
2. crop the source image and mask to it,
3. pick a uniformly random top-left corner where the box fits in the training frame,
4. copy only the object pixels and set the frame's label there to 254 (``OUTLIER_EXPOSURE``);
   the source background inside the box is not pasted.

RPL first rescales the source image by a factor drawn from ``(0.25, 0.5, 0.5, 0.75, 0.1, 0.125)``
and centre-crops / zero-pads it to the training crop (label padding 255); the rescaled source is
also the "OoD context" image of CoroCL (:func:`fit_to_size`).

Sources of (object image, object mask) pairs:

* :class:`CocoOutliers` — real data: COCO 2017 train images without Cityscapes-like classes, with
  Meta-OoD's prepared masks (254 on the union of all instances, 0 elsewhere), subsampled to
  ``proxy_size`` images (RPL: 2975, Meta-OoD/PEBAL: 297).
* :class:`DatasetOutliers` — any dataset whose ``semantic`` marks objects with 254; on the
  synthetic benchmark ``synthetic_outliers()`` renders street scenes holding the synthetic
  outlier-exposure family (balls, chairs, barrels, bags), disjoint from the test anomalies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ood_bench.adapters.base import OUTLIER_EXPOSURE, VOID, SegDataset
from ood_bench.errors import DataNotFoundError, OodBenchError

#: RPL's rescaling factors of the COCO image (``rpl_corocl.code/dataset/data_loader.py``).
RPL_SCALES = (0.25, 0.5, 0.5, 0.75, 0.1, 0.125)


@dataclass(frozen=True)
class OutlierRecipe:
    """The schedule every outlier-exposure training recipe shares; methods extend it."""

    steps: int
    batch_size: int
    crop: tuple[int, int] | None
    lr: float
    outlier_scales: tuple[float, ...] = RPL_SCALES


def inlier_mask(label):
    """Pixels that are neither pasted outliers (254) nor void (255): the inlier set."""
    return (label != OUTLIER_EXPOSURE) & (label != VOID)


@dataclass
class OutlierImage:
    """A source image (uint8 H×W×3) and its label map: 254 on objects, 0 elsewhere."""

    image: np.ndarray
    label: np.ndarray


class OutlierSource:
    """A sequence of :class:`OutlierImage` (subclasses implement ``__len__``/``__getitem__``)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> OutlierImage:
        raise NotImplementedError


class DatasetOutliers(OutlierSource):
    """Frames of a dataset whose ``semantic`` labels objects 254; frames without any such pixel
    are skipped (the next frame with one is used), so every item holds at least one object."""

    def __init__(self, dataset: SegDataset) -> None:
        if len(dataset) == 0:
            raise OodBenchError("the outlier-exposure dataset is empty")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> OutlierImage:
        for offset in range(len(self.dataset)):
            sample = self.dataset[(index + offset) % len(self.dataset)]
            objects = sample.semantic == OUTLIER_EXPOSURE
            if objects.any():
                label = np.where(objects, OUTLIER_EXPOSURE, 0).astype(np.uint8)
                return OutlierImage(sample.image, label)
        raise OodBenchError(f"no frame of {getattr(self.dataset, 'name', 'the dataset')!r} "
                            "holds an outlier-exposure object (label 254)")


def synthetic_outliers(height: int, width: int, objects: int = 3) -> DatasetOutliers:
    """Synthetic street scenes with ``objects`` outlier-exposure objects each (label 254),
    rendered from their own frame stream (never the training frames)."""
    from ood_bench.adapters import get_dataset

    dataset = get_dataset("synth-cityscapes", key="synth-outlier-exposure", outliers=objects,
                          height=height, width=width)
    return DatasetOutliers(dataset)


class CocoOutliers(OutlierSource):
    """COCO objects in Meta-OoD's prepared layout under ``root``::

        root/train2017/<id>.jpg
        root/annotations/ood_seg_train2017/<id>.png   (254 = object, 0 = background)

    The masks come from Meta-OoD's ``preparation/prepare_coco_segmentation.py`` (COCO 2017
    train images with no person, bicycle, car, motorcycle, bus, truck, traffic light or stop
    sign, both sides ≥ 480 px). ``proxy_size`` images are drawn with ``seed`` (None: all).
    """

    MASKS = Path("annotations") / "ood_seg_train2017"
    IMAGES = Path("train2017")

    def __init__(self, root: str | Path, proxy_size: int | None = 2975, seed: int = 0) -> None:
        root = Path(root)
        masks = sorted((root / self.MASKS).glob("*.png"))
        if not masks:
            raise DataNotFoundError(
                f"no COCO outlier masks under {str(root / self.MASKS)!r}: run Meta-OoD's "
                "preparation/prepare_coco_segmentation.py on COCO 2017 train "
                "(https://cocodataset.org) to create them"
            )
        if proxy_size is not None and proxy_size < len(masks):
            chosen = np.random.default_rng(seed).choice(len(masks), proxy_size, replace=False)
            masks = [masks[i] for i in sorted(chosen)]
        self.root, self.masks = root, masks

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, index: int) -> OutlierImage:
        mask_path = self.masks[index]
        image_path = self.root / self.IMAGES / f"{mask_path.stem}.jpg"
        if not image_path.is_file():
            raise DataNotFoundError(f"COCO image {str(image_path)!r} for mask "
                                    f"{str(mask_path)!r} is missing")
        image = np.asarray(Image.open(image_path).convert("RGB"))
        label = np.asarray(Image.open(mask_path))
        if label.shape != image.shape[:2]:
            raise OodBenchError(f"mask {str(mask_path)!r} is {label.shape}, but its image is "
                                f"{image.shape[:2]}")
        return OutlierImage(image, np.where(label == OUTLIER_EXPOSURE, OUTLIER_EXPOSURE, 0)
                            .astype(np.uint8))


def rescale(source: OutlierImage, scale: float) -> OutlierImage:
    """Resize image (bilinear) and label (nearest) by ``scale`` (at least 1 pixel per side)."""
    if scale == 1.0:
        return source
    h, w = source.label.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = np.asarray(Image.fromarray(source.image).resize(size, Image.BILINEAR))
    label = np.asarray(Image.fromarray(source.label).resize(size, Image.NEAREST))
    return OutlierImage(image, label)


def fit_to_size(source: OutlierImage, height: int, width: int) -> OutlierImage:
    """Centre-crop or zero-pad to ``height``×``width``; padded label pixels are void (255)."""
    image = np.zeros((height, width, 3), np.uint8)
    label = np.full((height, width), VOID, np.uint8)
    h, w = source.label.shape
    src_y, dst_y, rows = _centred(h, height)
    src_x, dst_x, cols = _centred(w, width)
    image[dst_y:dst_y + rows, dst_x:dst_x + cols] = source.image[src_y:src_y + rows,
                                                                 src_x:src_x + cols]
    label[dst_y:dst_y + rows, dst_x:dst_x + cols] = source.label[src_y:src_y + rows,
                                                                 src_x:src_x + cols]
    return OutlierImage(image, label)


def _centred(size: int, target: int) -> tuple[int, int, int]:
    """(source start, target start, length) of centring ``size`` pixels in ``target``."""
    if size >= target:
        return (size - target) // 2, 0, target
    return 0, (target - size) // 2, size


def paste_objects(image: np.ndarray, label: np.ndarray, source: OutlierImage,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paste the 254-pixels of ``source`` into a copy of ``image``/``label`` (mix_object).

    The box around all object pixels goes at a uniformly random position where it fits; a box
    larger than the frame is first cut to the frame size at a random offset. Returns the new
    image and label (254 on the pasted pixels). A source without objects changes nothing.
    """
    if image.shape[:2] != label.shape:
        raise OodBenchError(f"image {image.shape[:2]} and label {label.shape} differ in size")
    rows, cols = np.nonzero(source.label == OUTLIER_EXPOSURE)
    image, label = image.copy(), label.copy()
    if rows.size == 0:
        return image, label
    top, left = rows.min(), cols.min()
    box_h, box_w = rows.max() - top + 1, cols.max() - left + 1
    height, width = label.shape
    if box_h > height:
        top, box_h = top + rng.integers(box_h - height + 1), height
    if box_w > width:
        left, box_w = left + rng.integers(box_w - width + 1), width
    y = int(rng.integers(height - box_h + 1))
    x = int(rng.integers(width - box_w + 1))
    objects = source.label[top:top + box_h, left:left + box_w] == OUTLIER_EXPOSURE
    target = (slice(y, y + box_h), slice(x, x + box_w))
    image[target][objects] = source.image[top:top + box_h, left:left + box_w][objects]
    label[target][objects] = OUTLIER_EXPOSURE
    return image, label


def draw_outlier(outliers: Sequence[OutlierImage] | OutlierSource, scales: Sequence[float],
                 height: int, width: int, rng: np.random.Generator) -> OutlierImage:
    """A random source image, rescaled by a random factor of ``scales`` and fitted to the
    frame size (RPL's preparation of the COCO image)."""
    source = outliers[int(rng.integers(len(outliers)))]
    scale = float(scales[int(rng.integers(len(scales)))])
    return fit_to_size(rescale(source, scale), height, width)


def default_outliers(dataset: Sequence, coco_root: str | Path | None) -> OutlierSource:
    """The outlier source of a training set: COCO at ``coco_root`` when given; otherwise the
    synthetic outlier family at the frames' size (synthetic or unnamed in-memory frames)."""
    if coco_root is not None:
        return CocoOutliers(coco_root)
    name = str(getattr(dataset, "name", ""))
    if name.startswith("synth-") or not name:
        height, width = dataset[0].image.shape[:2]
        return synthetic_outliers(height, width)
    raise OodBenchError(f"outlier exposure on {name!r} needs COCO objects: pass "
                        "outlier_root=<folder with train2017/ and annotations/ood_seg_train2017/>")


def outlier_identity(outliers: OutlierSource) -> dict:
    """What determines an outlier source's items, for cache keys."""
    from .training import dataset_identity

    source = getattr(outliers, "dataset", None)
    if source is not None:
        return dataset_identity(source)
    return {"type": type(outliers).__name__, "root": str(getattr(outliers, "root", "")),
            "items": [str(m.name) for m in getattr(outliers, "masks", [])] or len(outliers)}
