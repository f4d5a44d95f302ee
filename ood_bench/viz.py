"""Sample grids: frames of any ``SegDataset`` with their labels overlaid, one row per domain."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ood_bench.adapters.base import OOD, OUTLIER_EXPOSURE, Sample, SegDataset
from ood_bench.errors import OodBenchError
from ood_bench.io import atomic_path

#: The official Cityscapes colours of the 19 trainIds.
CITYSCAPES_PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    np.uint8,
)  # fmt: skip
OOD_COLOUR = np.array((255, 140, 0), np.uint8)
OUTLIER_EXPOSURE_COLOUR = np.array((255, 255, 255), np.uint8)


def label_colours(sample: Sample) -> np.ndarray:
    """H×W×3 colour map of a sample's labels: trainId colours, OOD orange, void black.

    Frames without a semantic map show only the ``ood`` labels (OOD orange, in-distribution
    grey); frames with neither are shown black.
    """
    height, width = sample.image.shape[:2]
    colours = np.zeros((height, width, 3), np.uint8)
    if sample.semantic is not None:
        known = sample.semantic < len(CITYSCAPES_PALETTE)
        colours[known] = CITYSCAPES_PALETTE[sample.semantic[known]]
        colours[sample.semantic == OUTLIER_EXPOSURE] = OUTLIER_EXPOSURE_COLOUR
    elif sample.ood is not None:
        colours[sample.ood == 0] = 128
    if sample.ood is not None:
        colours[sample.ood == OOD] = OOD_COLOUR
    return colours


def overlay(sample: Sample, alpha: float = 0.55) -> np.ndarray:
    """The image blended with its label colours (void pixels keep the plain image)."""
    colours = label_colours(sample).astype(np.float32)
    labelled = colours.any(axis=2, keepdims=True)
    image = sample.image.astype(np.float32)
    blended = np.where(labelled, (1 - alpha) * image + alpha * colours, image)
    return blended.round().astype(np.uint8)


def pick_by_domain(dataset: SegDataset, per_domain: int) -> dict[str, list[Sample]]:
    """The first ``per_domain`` frames of each domain, in order of first appearance.

    Stops reading once every domain seen so far is full and ``4 * per_domain`` frames in a
    row brought no new domain, so large datasets are not read in full.
    """
    groups: dict[str, list[Sample]] = {}
    since_new = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        key = sample.domain or "-"
        since_new = 0 if key not in groups else since_new + 1
        group = groups.setdefault(key, [])
        if len(group) < per_domain:
            group.append(sample)
        full = all(len(g) >= per_domain for g in groups.values())
        if full and since_new >= 4 * per_domain:
            break
    return groups


def sample_grid(
    datasets: Sequence[SegDataset], per_domain: int = 3, scale: int = 2
) -> tuple[np.ndarray, list[str]]:
    """Tile frames into an RGB grid: one row per (dataset, domain), each cell image | overlay.

    Returns the grid and the row titles (``"<dataset> · <domain>"``). Frames of different
    sizes are resized (nearest neighbour) to the first frame's size; ``scale`` enlarges cells.
    """
    if per_domain < 1:
        raise OodBenchError(f"per_domain must be at least 1, got {per_domain}")
    rows, titles = [], []
    cell_hw: tuple[int, int] | None = None
    for dataset in datasets:
        if len(dataset) == 0:
            raise OodBenchError(f"dataset {dataset.name!r} is empty; nothing to show")
        for domain, samples in pick_by_domain(dataset, per_domain).items():
            cells = []
            for sample in samples:
                pair = np.concatenate([sample.image, overlay(sample)], axis=1)
                cell_hw = cell_hw or pair.shape[:2]
                cells.append(_resize_nearest(pair, cell_hw))
            blank = np.full_like(cells[0], 255)
            cells += [blank] * (per_domain - len(cells))
            gap = np.full((cell_hw[0], 4, 3), 255, np.uint8)
            rows.append(np.concatenate([c for cell in cells for c in (cell, gap)][:-1], axis=1))
            titles.append(f"{dataset.name or type(dataset).__name__} · {domain}")
    grid = np.concatenate([np.pad(r, ((2, 2), (0, 0), (0, 0)), constant_values=255) for r in rows])
    return grid.repeat(scale, axis=0).repeat(scale, axis=1), titles


def _resize_nearest(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == size:
        return image
    rows = (np.arange(size[0]) * image.shape[0] / size[0]).astype(np.int64)
    cols = (np.arange(size[1]) * image.shape[1] / size[1]).astype(np.int64)
    return image[rows][:, cols]


def save_grid(
    datasets: Sequence[SegDataset],
    path: str | os.PathLike,
    per_domain: int = 3,
    scale: int = 2,
) -> np.ndarray:
    """Render ``sample_grid`` with row titles to a 256-colour PNG at ``path`` (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    grid, titles = sample_grid(datasets, per_domain, scale)
    dpi = 100
    label_w = 1.9
    fig_w = grid.shape[1] / dpi + label_w
    fig_h = grid.shape[0] / dpi
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=dpi)
    ax = fig.add_axes((label_w / fig_w, 0, 1 - label_w / fig_w, 1))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    row_h = grid.shape[0] / len(titles)
    for k, title in enumerate(titles):
        y = 1 - (k + 0.5) * row_h / grid.shape[0]
        fig.text(0.01, y, title, ha="left", va="center", fontsize=8)
    fig.canvas.draw()
    rendered = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    plt.close(fig)
    # an adaptive 256-colour palette keeps the PNG small enough for a README
    picture = Image.fromarray(rendered).quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    with atomic_path(path, suffix=".png") as tmp:
        picture.save(tmp, format="PNG", optimize=True)
    return grid
