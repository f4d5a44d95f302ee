"""Figures from score stores: ROC / PR curves per method, and uncertainty-map grids.

* :func:`store_curves` pools a store's labelled frames in the metric engine
  (:class:`~ood_bench.metrics.pixel.PixelOODMetric`) and returns its ROC and PR curves, so the
  plotted curves are exactly those the reported AUROC / AP are computed from.
* :func:`save_curves` draws ROC and PR side by side for several methods on one dataset.
* :func:`uncertainty_grid` / :func:`save_grid` tile frames in the paper's Figure 3 layout: one
  column per frame; rows image, ground truth, then one score map per method.

Files are written atomically; the format (PNG or PDF) follows the output file's extension.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ood_bench.adapters.base import VOID, Sample, SegDataset
from ood_bench.errors import OodBenchError
from ood_bench.io import atomic_path
from ood_bench.store import ScoreStore, StoredFrame
from ood_bench.viz import label_colours

#: Output formats by file extension.
FIGURE_FORMATS = {".png": "PNG", ".pdf": "PDF"}
#: Pixels between grid cells, width of the row-title margin left of the grid and height of
#: the frame-name strip above it.
GRID_GAP = 4
GRID_MARGIN = 120
GRID_HEADER = 16
#: Score maps are shown between these percentiles of each map's evaluated pixels.
SCORE_PERCENTILES = (1.0, 99.0)


@dataclass(frozen=True)
class StoreName:
    """Model, method and dataset of a store named by ``store_filename``."""

    model: str
    method: str
    dataset: str


def parse_store_name(path: str | os.PathLike) -> StoreName:
    """Split ``<model>__<method>__<dataset>.h5`` (the runner's store file name)."""
    parts = Path(path).stem.split("__")
    if len(parts) != 3 or not all(parts):
        raise OodBenchError(
            f"{str(path)!r} is not named like a score store: expected "
            "<model>__<method>__<dataset>.h5"
        )
    return StoreName(*parts)


def figure_format(path: str | os.PathLike) -> str:
    """The figure format for ``path``'s extension (PNG or PDF)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FIGURE_FORMATS:
        raise OodBenchError(
            f"--out {str(path)!r}: unsupported figure extension {suffix or '(none)'!r}; "
            f"use one of {', '.join(FIGURE_FORMATS)}"
        )
    return FIGURE_FORMATS[suffix]


def store_curves(path: str | os.PathLike, ignore_index: int = VOID) -> tuple[dict, dict]:
    """ROC / PR curves and the metrics (AUROC, AP, FPR@95) of a store's labelled frames.

    Pools every committed frame with ``ood`` labels into a binned ``PixelOODMetric`` (bounded
    memory whatever the dataset size). Raises if the store has no labelled frame.
    """
    from ood_bench.metrics.pixel import PixelOODMetric

    store = ScoreStore(path)
    metric = PixelOODMetric(exact=False, ignore_index=ignore_index)
    labelled = 0
    for frame in store.read_frames(sorted(store.committed_indices())):
        if frame.ood is not None:
            metric.update(frame.score, frame.ood, frame=frame.name)
            labelled += 1
    if not labelled:
        raise OodBenchError(
            f"score store {str(path)!r} has no frame with OOD labels; curves need labelled frames"
        )
    return metric.curves(), metric.compute()


def save_curves(
    curves: Mapping[str, tuple[dict, dict]], path: str | os.PathLike, title: str = ""
) -> None:
    """Draw ROC (left) and PR (right) curves, one line per method, to ``path`` atomically.

    ``curves`` maps a legend label to :func:`store_curves`' ``(curves, metrics)``.
    """
    fmt = figure_format(path)
    if not curves:
        raise OodBenchError("no curves to plot: give at least one score store")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(10, 4.4), dpi=120)
    for label, (curve, metrics) in curves.items():
        roc, pr = curve["roc"], curve["pr"]
        roc_ax.plot(roc["fpr"], roc["tpr"], lw=1.5,
                    label=f"{label} (AUROC {100 * metrics['auroc']:.2f}, "
                          f"FPR@95 {100 * metrics['fpr95']:.2f})")
        pr_ax.plot(pr["recall"], pr["precision"], lw=1.5, drawstyle="steps-post",
                   label=f"{label} (AP {100 * metrics['ap']:.2f})")
    roc_ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC",
               xlim=(0, 1), ylim=(0, 1.01))
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall",
              xlim=(0, 1), ylim=(0, 1.01))
    for ax in (roc_ax, pr_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if ax is roc_ax else "upper right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=Path(path).suffix) as tmp:
            fig.savefig(tmp, format=fmt.lower())
    finally:
        plt.close(fig)


def score_colours(score: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """H×W×3 uint8 heat map of one score map (inferno, high = bright).

    Each map is stretched between the :data:`SCORE_PERCENTILES` of its own evaluated pixels
    (``valid``; all pixels if ``None`` or empty): methods with different score scales (softmax
    vs energy) become visible side by side, and a few extreme pixels do not wash a map out.
    Colours therefore compare pixels within a map, not absolute scores across maps.
    """
    from matplotlib import colormaps

    score = np.asarray(score, dtype=np.float64)
    finite = np.isfinite(score) & (True if valid is None else valid)
    reference = score[finite] if finite.any() else score[np.isfinite(score)]
    if reference.size == 0:
        return np.zeros((*score.shape, 3), np.uint8)
    low, high = np.percentile(reference, SCORE_PERCENTILES)
    scaled = np.clip((score - low) / (high - low), 0, 1) if high > low else np.zeros_like(score)
    scaled = np.nan_to_num(scaled, nan=0.0)
    return (colormaps["inferno"](scaled)[..., :3] * 255).round().astype(np.uint8)


def _fit(cell: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """Resize an RGB cell to ``size`` = (height, width)."""
    from PIL import Image

    if cell.shape[:2] == size:
        return cell
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(cell).resize((size[1], size[0]), method))


def _cell_width(frame_hw: tuple[int, int], cell_height: int) -> int:
    return max(1, round(cell_height * frame_hw[1] / frame_hw[0]))


def grid_size(
    frame_hw: tuple[int, int], n_frames: int, n_methods: int, cell_height: int
) -> tuple[int, int]:
    """(height, width) in pixels of :func:`uncertainty_grid`'s output."""
    cell_width = _cell_width(frame_hw, cell_height)
    rows = 2 + n_methods
    return (GRID_HEADER + rows * cell_height + (rows - 1) * GRID_GAP,
            GRID_MARGIN + n_frames * cell_width + (n_frames - 1) * GRID_GAP)


def uncertainty_grid(
    images: Sequence[np.ndarray],
    frames: Mapping[str, Sequence[StoredFrame]],
    cell_height: int = 192,
) -> np.ndarray:
    """The paper's Figure 3 layout as one RGB array: a column per frame, rows image, ground
    truth, then the score map of each method (row titles in a left margin, frame names on top).

    ``images[k]`` is frame k's H×W×3 image; ``frames`` maps a method label to its stored
    frames, the k-th of each being the same frame as ``images[k]``. Every cell has the first
    frame's aspect ratio at ``cell_height`` pixels.
    """
    from PIL import Image, ImageDraw

    if not images or not frames:
        raise OodBenchError("an uncertainty grid needs at least one frame and one method")
    if cell_height < 8:
        raise OodBenchError(f"cell height must be at least 8 pixels, got {cell_height}")
    methods = list(frames)
    for method, stored in frames.items():
        if len(stored) != len(images):
            raise OodBenchError(f"method {method!r} has {len(stored)} frames for "
                                f"{len(images)} images")
    height, width = grid_size(images[0].shape[:2], len(images), len(methods), cell_height)
    cell = (cell_height, _cell_width(images[0].shape[:2], cell_height))
    canvas = np.full((height, width, 3), 255, np.uint8)
    for column, image in enumerate(images):
        reference = frames[methods[0]][column]
        truth = label_colours(Sample(image, reference.ood, reference.semantic, reference.name))
        valid = None if reference.ood is None else reference.ood != VOID
        cells = [_fit(image, cell, False), _fit(truth, cell, True)]
        cells += [_fit(score_colours(frames[m][column].score, valid), cell, False) for m in methods]
        x = GRID_MARGIN + column * (cell[1] + GRID_GAP)
        for row, picture in enumerate(cells):
            y = GRID_HEADER + row * (cell_height + GRID_GAP)
            canvas[y:y + cell_height, x:x + cell[1]] = picture
    titled = Image.fromarray(canvas)
    draw = ImageDraw.Draw(titled)
    for row, title in enumerate(["image", "ground truth", *methods]):
        y = GRID_HEADER + row * (cell_height + GRID_GAP) + cell_height // 2
        draw.text((6, y), title[:18], fill=(0, 0, 0), anchor="lm")
    for column, frame in enumerate(frames[methods[0]]):
        x = GRID_MARGIN + column * (cell[1] + GRID_GAP) + cell[1] // 2
        fits = cell[1] // 6  # characters of the default font that fit in a cell
        name = frame.name if len(frame.name) <= fits else "..." + frame.name[-fits:]
        draw.text((x, GRID_HEADER // 2), name, fill=(0, 0, 0), anchor="mm")
    return np.asarray(titled)


def select_frames(
    stores: Mapping[str, str | os.PathLike], count: int = 4, names: Sequence[str] = ()
) -> dict[str, list[StoredFrame]]:
    """The same frames from every store: those called ``names``, else ``count`` frames spread
    evenly over the frames all stores hold (in index order)."""
    handles = {label: ScoreStore(path) for label, path in stores.items()}
    common = sorted(set.intersection(*(h.committed_indices() for h in handles.values())))
    if not common:
        raise OodBenchError(f"the score stores {', '.join(map(str, stores.values()))} "
                            "have no frame in common")
    if names:
        first = next(iter(handles.values()))
        name_of = first.frame_names()
        index_of = {name_of[i]: i for i in common}
        missing = [n for n in names if n not in index_of]
        if missing:
            shown = ", ".join(list(index_of)[:10]) + (" ..." if len(index_of) > 10 else "")
            raise OodBenchError(f"no frame named {missing} in the stores; frames: {shown}")
        chosen = [index_of[n] for n in names]
    else:
        if count < 1:
            raise OodBenchError(f"--frames must be at least 1, got {count}")
        spread = np.linspace(0, len(common) - 1, min(count, len(common))).round().astype(int)
        chosen = [common[k] for k in dict.fromkeys(spread.tolist())]
    return {label: list(h.read_frames(chosen)) for label, h in handles.items()}


def store_dataset(
    path: str | os.PathLike, data_root: str | os.PathLike | None = None
) -> SegDataset:
    """The dataset a store was scored on, built with the options recorded in its config."""
    from ood_bench.adapters.base import get_dataset

    header = ScoreStore(path).header()
    spec = (header or {}).get("config", {}).get("dataset")
    if not isinstance(spec, dict) or "name" not in spec:
        raise OodBenchError(f"score store {str(path)!r} does not record its dataset "
                            "(config.dataset.name); was it written by `oodbench run`?")
    return get_dataset(spec["name"], data_root=data_root, **spec.get("options", {}))


def frame_images(dataset: SegDataset, frames: Sequence[StoredFrame]) -> list[np.ndarray]:
    """The images of stored frames, read from the dataset they were scored on."""
    images = []
    for frame in frames:
        if frame.index >= len(dataset):
            raise OodBenchError(f"dataset {dataset.name!r} has {len(dataset)} frames; the store's "
                                f"frame {frame.index} ({frame.name!r}) is not among them")
        sample = dataset[frame.index]
        if sample.name != frame.name:
            raise OodBenchError(
                f"dataset {dataset.name!r} frame {frame.index} is {sample.name!r}, the store's "
                f"is {frame.name!r}: the store was written from other data (check --data-root)"
            )
        images.append(sample.image)
    return images


def save_grid(grid: np.ndarray, path: str | os.PathLike) -> None:
    """Write a grid array to ``path`` (PNG or PDF by extension) atomically, pixel for pixel."""
    from PIL import Image

    fmt = figure_format(path)
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        Image.fromarray(grid).save(tmp, format=fmt)
