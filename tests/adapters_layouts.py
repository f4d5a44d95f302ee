"""Writers of tiny dataset trees in the exact released layouts (names, extensions, bit depths,
``.npz`` keys, ``_color`` decoys), shared by the adapter and CLI tests.

Every writer returns what the test needs to check the adapter independently: the images it
wrote (exact for PNG/lossless WebP) keyed by frame id.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 8, 16


def random_image(seed: int, shape: tuple[int, ...] = (H, W, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def label_map(values: list[int], seed: int = 0) -> np.ndarray:
    """An H×W uint8 map using every value of ``values`` (the first rows cycle through them)."""
    rng = np.random.default_rng(seed)
    label = rng.choice(np.asarray(values, dtype=np.uint8), size=(H, W))
    label.flat[: len(values)] = values
    return label


def save_image(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    """Save by extension: JPG quality 95, WebP lossless and exact, PNG as given (``mode``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode)
    options = {".jpg": {"quality": 95}, ".webp": {"lossless": True, "exact": True}}
    image.save(path, **options.get(path.suffix, {}))


def save_label(path: Path, label: np.ndarray, bits: int = 8) -> None:
    """A single-channel label PNG, 8-bit (mode L) or 16-bit (mode I;16)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = label.astype(np.uint16 if bits == 16 else np.uint8)
    Image.fromarray(array).save(path)


def save_color_decoy(path: Path) -> None:
    """A ``*_color.png`` visualisation that an adapter must never read as a label."""
    save_image(path, random_image(99))


def roadanomaly_official(root: Path, labels: dict[str, np.ndarray], ext: str = ".jpg") -> dict:
    """``RoadAnomaly_jpg``: frame_list.json, frames/<name><ext>, <name>.labels/… (+ decoys)."""
    images = {}
    (root / "frames").mkdir(parents=True, exist_ok=True)
    (root / "frame_list.json").write_text(json.dumps([f"{n}{ext}" for n in labels]))
    (root / "credits.txt").write_text("per-image licences\n")
    for seed, (name, label) in enumerate(labels.items()):
        images[name] = random_image(seed)
        save_image(root / "frames" / f"{name}{ext}", images[name])
        folder = root / "frames" / f"{name}.labels"
        save_label(folder / "labels_semantic.png", label)
        save_color_decoy(folder / "labels_semantic_color.png")
        save_label(folder / "labels_instance.png", label * 3)
    return images


def roadanomaly_repackaged(root: Path, labels: dict[str, np.ndarray]) -> dict:
    """Synboost ``road_anomaly``: original/<name>.jpg + labels/<name>.png (0/1)."""
    images = {}
    for seed, (name, label) in enumerate(labels.items()):
        images[name] = random_image(seed)
        save_image(root / "original" / f"{name}.jpg", images[name])
        save_label(root / "labels" / f"{name}.png", label)
    return images


def smiyc(root: Path, frames: dict[str, np.ndarray | None], ext: str) -> dict:
    """``dataset_*Track``: images/<fid><ext> + labels_masks/<fid>_labels_semantic(_color).png."""
    images = {}
    for seed, (fid, label) in enumerate(frames.items()):
        images[fid] = random_image(seed)
        save_image(root / "images" / f"{fid}{ext}", images[fid])
        if label is not None:
            save_label(root / "labels_masks" / f"{fid}_labels_semantic.png", label)
            save_color_decoy(root / "labels_masks" / f"{fid}_labels_semantic_color.png")
    (root / "labels_masks").mkdir(parents=True, exist_ok=True)
    return images


def cityscapes_style(
    root: Path, split: str, frames: dict[tuple[str, str], np.ndarray], label_dir: str,
    label_suffix: str, extra_suffixes: tuple[str, ...] = (),
) -> dict:
    """``leftImg8bit/<split>/<folder>/<id>_leftImg8bit.png`` + ``<label_dir>/…/<id><suffix>``.

    ``frames`` maps ``(folder, frame id)`` to the label; ``extra_suffixes`` are decoy files
    written beside each label (``_gtFine_color.png``...).
    """
    images = {}
    for seed, ((folder, fid), label) in enumerate(frames.items()):
        images[fid] = random_image(seed)
        save_image(root / "leftImg8bit" / split / folder / f"{fid}_leftImg8bit.png", images[fid])
        labels = root / label_dir / split / folder
        save_label(labels / f"{fid}{label_suffix}", label)
        for suffix in extra_suffixes:
            save_color_decoy(labels / f"{fid}{suffix}")
    return images


def muad(root: Path, split_folder: str, frames: dict[str, np.ndarray]) -> dict:
    """``<split>/leftImg8bit/<id>_leftImg8bit.png`` + ``<split>/leftLabel/<id>_leftLabel.png``."""
    images = {}
    for seed, (fid, label) in enumerate(frames.items()):
        images[fid] = random_image(seed)
        save_image(root / split_folder / "leftImg8bit" / f"{fid}_leftImg8bit.png", images[fid])
        save_label(root / split_folder / "leftLabel" / f"{fid}_leftLabel.png", label)
    return images


ACDC_IMAGES = Path("rgb_anon_trainvaltest", "rgb_anon")


def acdc_poc(
    root: Path, frames: dict[tuple[str, str, str], np.ndarray], label_dir: Path,
    base_root: Path | None = None, rebuilt: bool = False,
) -> dict:
    """The POC release: ``rgb_anon/<cond>/val/<seq>/<stem>_rgb_anon_<prompt>_<n>.npz`` (key
    ``img``, uint8 wrapped difference) beside the ACDC base ``<stem>_rgb_anon.png`` (or under
    ``base_root``), labels ``<label_dir>/<cond>/val/<seq>/<name>.png``.

    ``frames`` maps ``(cond, seq, name)`` to the label; returns the POC images by name. With
    ``rebuilt`` the POC images are written as PNGs instead of differences.
    """
    images = {}
    for seed, ((cond, seq, name), label) in enumerate(frames.items()):
        folder = root / ACDC_IMAGES / cond / "val" / seq
        images[name] = random_image(seed)
        save_label(root / label_dir / cond / "val" / seq / f"{name}.png", label)
        if rebuilt:
            save_image(folder / f"{name}.png", images[name])
            continue
        base = random_image(seed + 100)
        stem = name.split("_rgb_anon_")[0]
        base_folder = folder if base_root is None else base_root / ACDC_IMAGES / cond / "val" / seq
        save_image(base_folder / f"{stem}_rgb_anon.png", base)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / f"{name}.npz", img=images[name] - base)  # uint8 wraps
    return images


def fishyscapes_laf(root: Path, laf_root: Path, frames: dict[tuple[str, str], np.ndarray]) -> dict:
    """``<NNNN>_<LAF id>_labels.png`` masks; images in ``laf_root`` under ``(split, LAF id)``."""
    images = {}
    for index, ((split, laf_id), label) in enumerate(frames.items()):
        scene = laf_id.rsplit("_", 2)[0]
        images[laf_id] = random_image(index)
        save_image(
            laf_root / "leftImg8bit" / split / scene / f"{laf_id}_leftImg8bit.png", images[laf_id]
        )
        save_label(root / f"{index:04d}_{laf_id}_labels.png", label)
    return images


def fishyscapes_static(
    root: Path, cityscapes_root: Path, frames: dict[str, np.ndarray], overlays: dict
) -> dict:
    """``<NNNN>_<cs id>_rgb.npz`` (key ``rgb``) + ``_labels.png``; bases in Cityscapes val.

    Returns the Cityscapes base images by Cityscapes frame id.
    """
    bases = {}
    for index, (cs_id, label) in enumerate(frames.items()):
        city = cs_id.split("_")[0]
        bases[cs_id] = random_image(index)
        save_image(
            cityscapes_root / "leftImg8bit" / "val" / city / f"{cs_id}_leftImg8bit.png",
            bases[cs_id],
        )
        root.mkdir(parents=True, exist_ok=True)
        np.savez(root / f"{index:04d}_{cs_id}_rgb.npz", rgb=overlays[cs_id])
        save_label(root / f"{index:04d}_{cs_id}_labels.png", label)
    return bases
