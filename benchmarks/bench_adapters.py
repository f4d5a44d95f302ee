"""Frames/s of the dataset adapters decoding 2048×1024 frames, with and without DataLoader workers.

Writes a small tree per format in the released layout (PNG: Cityscapes val, JPG: SMIYC
RoadAnomaly21, WebP: SMIYC RoadObstacle21, all with label PNGs) plus ACDC-POC differences, then
times full passes through ``get_dataset(...)`` and a ``torch.utils.data.DataLoader``.

    python benchmarks/bench_adapters.py [--frames 8] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ood_bench.adapters import get_dataset

H, W = 1024, 2048


def scene(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """A road-scene-like image: smooth gradients, a few flat regions and mild sensor noise
    (random noise alone would make PNG/WebP decoding unrealistically slow)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([x / w * 200, y / h * 180, (x + y) / (w + h) * 160], -1)
    for _ in range(12):
        top, left = rng.integers(0, h - 64), rng.integers(0, w - 64)
        height, width = rng.integers(32, 256), rng.integers(32, 512)
        image[top : top + height, left : left + width] = rng.integers(0, 256, 3)
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def labels(seed: int, values: list[int], h: int = H, w: int = W) -> np.ndarray:
    label = np.full((h, w), values[0], np.uint8)
    rng = np.random.default_rng(seed)
    for value in values[1:]:
        top, left = rng.integers(0, h - 200), rng.integers(0, w - 200)
        label[top : top + 200, left : left + 200] = value
    return label


def save(path: Path, array: np.ndarray, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)


def write_trees(root: Path, frames: int) -> dict[str, tuple[str, Path]]:
    """One tree per format; returns label → (dataset name, root)."""
    for i in range(frames):
        cid = f"frankfurt_000000_{i:06d}"
        save(root / "cs/leftImg8bit/val/frankfurt" / f"{cid}_leftImg8bit.png", scene(i))
        save(root / "cs/gtFine/val/frankfurt" / f"{cid}_gtFine_labelIds.png", labels(i, [7, 26]))
        save(root / "ra21/images" / f"validation{i:04d}.jpg", scene(i), quality=95)
        save(root / "ra21/labels_masks" / f"validation{i:04d}_labels_semantic.png",
             labels(i, [0, 1, 255]))
        save(root / "ro21/images" / f"validation_{i}.webp", scene(i), quality=90)
        save(root / "ro21/labels_masks" / f"validation_{i}_labels_semantic.png",
             labels(i, [255, 0, 1]))
        folder = root / "poc/rgb_anon_trainvaltest/rgb_anon/fog/val/GOPR0475"
        base, poc = scene(i, 1080, 1920), scene(i + 100, 1080, 1920)
        save(folder / f"GOPR0475_frame_{i:06d}_rgb_anon.png", base)
        np.savez_compressed(folder / f"GOPR0475_frame_{i:06d}_rgb_anon_dog_{i}.npz", img=poc - base)
        save(root / "poc/gt_trainval/gt/fog/val/GOPR0475" /
             f"GOPR0475_frame_{i:06d}_rgb_anon_dog_{i}.png", labels(i, [7, 26, 100], 1080, 1920))
    return {
        "PNG 2048×1024 (cityscapes-val)": ("cityscapes-val", root / "cs"),
        "JPG 2048×1024 (smiyc-ra21-val)": ("smiyc-ra21-val", root / "ra21"),
        "WebP 2048×1024 (smiyc-ro21-val)": ("smiyc-ro21-val", root / "ro21"),
        "ACDC-POC 1920×1080 .npz, cached": ("acdc-poc", root / "poc"),
    }


def frames_per_second(name: str, root: Path, workers: int, passes: int) -> float:
    dataset = get_dataset(name, root)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, persistent_workers=workers > 0
    )
    for _ in loader:  # warm-up pass: starts workers, fills the OS page cache and ACDC-POC cache
        pass
    start = time.perf_counter()
    for _ in range(passes):
        for _ in loader:
            pass
    return passes * len(dataset) / (time.perf_counter() - start)


def first_pass_poc(root: Path) -> float:
    """Frames/s of the first pass over ACDC-POC: decode base + .npz, add, write the PNG cache."""
    dataset = get_dataset("acdc-poc", root)
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    return len(dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["OODBENCH_CACHE"] = str(Path(tmp, "cache"))
        trees = write_trees(Path(tmp), args.frames)
        print(f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
              f"{args.frames} frames × {args.passes} passes")
        print(f"ACDC-POC first pass (rebuild + cache write): "
              f"{first_pass_poc(trees['ACDC-POC 1920×1080 .npz, cached'][1]):.1f} frames/s")
        header = "".join(f"{f'workers={w}':>12}" for w in args.workers)
        print(f"{'format':<34}{header}{'ratio':>8}")
        for label, (name, root) in trees.items():
            rates = [frames_per_second(name, root, w, args.passes) for w in args.workers]
            cells = "".join(f"{r:>12.1f}" for r in rates)
            print(f"{label:<34}{cells}{rates[-1] / rates[0]:>8.2f}")


if __name__ == "__main__":
    main()
