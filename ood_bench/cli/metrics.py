"""``oodbench metrics``: evaluate stored anomaly score maps against label PNGs.

Score maps (higher = more anomalous) come from one of:

* a folder of ``<stem>.npy`` files (one 2-D array per frame);
* a folder of ``<fid>.hdf5`` / ``<fid>.h5`` files holding a dataset ``value`` (the layout the
  SegmentMeIfYouCan toolkit writes: ``outputs/anomaly_p/<method>/<dataset>/<fid>.hdf5``);
* one HDF5 file with one dataset per frame, the frame name being the dataset's path inside it.

Each frame ``<name>`` is paired with ``<labels>/<name>.png``, or else
``<labels>/<name>_labels_semantic.png`` (the SMIYC ``labels_masks/`` naming). Labels are 0
(in-distribution), 1 (OOD) and ``--ignore-index`` (void); ``--ood-value`` maps other label
encodings (e.g. RoadAnomaly's 2) onto that convention.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..errors import DataNotFoundError, OodBenchError
from ..io import atomic_write

HDF5_SUFFIXES = (".hdf5", ".h5")
SCORE_SUFFIXES = (".npy", *HDF5_SUFFIXES)
LABEL_PATTERNS = ("{}.png", "{}_labels_semantic.png")
SMIYC_DATASET = "value"


@dataclass(frozen=True)
class ScoreFrame:
    """Where one frame's score map lives: a file, and the HDF5 dataset inside it if any."""

    name: str
    path: Path
    dataset: str | None = None


@click.command("metrics")
@click.option("--scores", "scores_path", required=True, type=click.Path(path_type=Path),
              help="Folder of <stem>.npy or <fid>.hdf5 score maps, or one HDF5 file.")
@click.option("--labels", "labels_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of label PNGs: <name>.png or <name>_labels_semantic.png.")
@click.option("--ignore-index", default=255, show_default=True, type=int,
              help="Label value of void pixels (not evaluated).")
@click.option("--ood-value", "ood_values", multiple=True, type=int,
              help="Label value(s) meaning OOD; all other non-void values become "
                   "in-distribution (e.g. --ood-value 2 for RoadAnomaly). Repeatable.")
@click.option("--fpr-at", type=click.Choice(["first", "closest", "interpolated"]),
              default="first", show_default=True, help="FPR@95 convention (metric spec v1).")
@click.option("--exact/--streaming", default=True, show_default=True,
              help="Exact pooled metrics, or bounded-memory binned ones with a certified bound.")
@click.option("--components", type=click.Choice(["none", "anomaly", "obstacle"]),
              default="none", show_default=True,
              help="Also compute SMIYC component metrics with this track's size limits.")
@click.option("--threshold", type=float, default=None,
              help="Score threshold of the component metrics (default: pixel best-F1 point).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write all results to this JSON file.")
def metrics(
    scores_path: Path,
    labels_dir: Path,
    ignore_index: int,
    ood_values: tuple[int, ...],
    fpr_at: str,
    exact: bool,
    components: str,
    threshold: float | None,
    json_path: Path | None,
) -> None:
    """Pixel (AUROC, AP, FPR@95) and optional component metrics of stored score maps.

    --scores is a folder of <stem>.npy maps, a folder of SMIYC-style <fid>.hdf5 files (dataset
    'value'), or one HDF5 file with one dataset per frame. Frame <name> is paired with
    <labels>/<name>.png, else <labels>/<name>_labels_semantic.png. Labels: 0 in-distribution,
    1 OOD, --ignore-index void. All pixels of all frames are pooled.
    """
    from ..metrics.component import ComponentMetric
    from ..metrics.pixel import METRIC_SPEC_VERSION, PixelOODMetric

    if not labels_dir.is_dir():
        raise DataNotFoundError(f"label folder {labels_dir} does not exist")
    frames = find_score_frames(scores_path)
    pairs = [(frame, find_label(labels_dir, frame)) for frame in frames]

    def evaluated(metric: Any) -> Any:
        """``metric`` after one update per frame; frames are read one at a time, never kept."""
        for frame, label_path in pairs:
            scores, labels = read_pair(frame, label_path, ignore_index, ood_values)
            metric.update(scores, labels, frame=frame.name)
        return metric

    pixel = evaluated(PixelOODMetric(exact=exact, ignore_index=ignore_index, fpr_at=fpr_at))
    pixel_result = pixel.compute()
    results: dict[str, Any] = {
        "metric_spec_version": METRIC_SPEC_VERSION,
        "scores": str(scores_path),
        "labels": str(labels_dir),
        "settings": {"ignore_index": ignore_index, "ood_values": list(ood_values),
                     "fpr_at": fpr_at, "exact": exact, "components": components},
        "n_frames": len(pairs),
        "pixel": pixel_result,
    }
    if components != "none":
        options = {"track": components, "ignore_index": ignore_index}
        component = (ComponentMetric(threshold, **options) if threshold is not None
                     else ComponentMetric.from_pixel_metric(pixel, **options))
        results["components"] = evaluated(component).compute()

    print_results(results)
    if json_path is not None:
        with atomic_write(json_path, "w") as handle:
            json.dump(to_json(results), handle, indent=2, allow_nan=False)
            handle.write("\n")


def find_score_frames(scores_path: Path) -> list[ScoreFrame]:
    """Every score map under ``scores_path`` (see the module docstring for the layouts)."""
    if not scores_path.exists():
        raise DataNotFoundError(f"score path {scores_path} does not exist")
    if scores_path.is_file():
        if scores_path.suffix.lower() not in HDF5_SUFFIXES:
            raise OodBenchError(
                f"--scores {scores_path} must be a folder of score maps or an .hdf5/.h5 file"
            )
        return hdf5_frames(scores_path)
    files = sorted(p for p in scores_path.iterdir() if p.suffix.lower() in SCORE_SUFFIXES)
    if not files:
        raise DataNotFoundError(
            f"no score maps ({', '.join('*' + s for s in SCORE_SUFFIXES)}) in {scores_path}"
        )
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise OodBenchError(f"two score maps for frame {path.stem!r}: {seen[path.stem]} {path}")
        seen[path.stem] = path
    return [ScoreFrame(stem, path, None if path.suffix.lower() == ".npy" else SMIYC_DATASET)
            for stem, path in seen.items()]


def hdf5_frames(path: Path) -> list[ScoreFrame]:
    """One frame per dataset of an HDF5 file, named by its path inside the file."""
    import h5py

    names: list[str] = []
    with read_errors(path):
        with h5py.File(path, "r") as handle:
            handle.visititems(
                lambda name, node: names.append(name) if isinstance(node, h5py.Dataset) else None
            )
    if not names:
        raise OodBenchError(f"HDF5 file {path} holds no dataset")
    return [ScoreFrame(name, path, name) for name in sorted(names)]


def find_label(labels_dir: Path, frame: ScoreFrame) -> Path:
    """The label PNG of ``frame``, by the documented naming rules."""
    candidates = [labels_dir / pattern.format(frame.name) for pattern in LABEL_PATTERNS]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = " or ".join(c.name for c in candidates)
    raise DataNotFoundError(
        f"no label for frame {frame.name!r} (score map {frame.path}): "
        f"expected {tried} in {labels_dir}"
    )


def read_pair(
    frame: ScoreFrame, label_path: Path, ignore_index: int, ood_values: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and (re-mapped) labels of one frame, with shapes checked."""
    from ..adapters.io import read_label

    scores = read_scores(frame)
    labels = read_label(label_path)
    if ood_values:
        labels = np.where(np.isin(labels, ood_values), 1,
                          np.where(labels == ignore_index, ignore_index, 0))
    if scores.shape != labels.shape:
        raise OodBenchError(
            f"shape mismatch in frame {frame.name!r}: scores {scores.shape} ({frame.path}) vs "
            f"labels {labels.shape} ({label_path})"
        )
    return scores, labels


def read_scores(frame: ScoreFrame) -> np.ndarray:
    """A 2-D score map (singleton dimensions squeezed, as the SMIYC toolkit does)."""
    with read_errors(frame.path):
        if frame.dataset is None:
            scores = np.load(frame.path, allow_pickle=False)
        else:
            import h5py

            with h5py.File(frame.path, "r") as handle:
                if frame.dataset not in handle:
                    raise OodBenchError(
                        f"{frame.path} has no dataset {frame.dataset!r} (found {list(handle)})"
                    )
                scores = handle[frame.dataset][()]
    scores = np.squeeze(np.asarray(scores))
    if scores.ndim != 2:
        raise OodBenchError(f"score map {frame.path} is not 2-D: shape {scores.shape}")
    return scores


@contextlib.contextmanager
def read_errors(path: Path) -> Iterator[None]:
    """Turn a failure to read ``path`` into an ``OodBenchError`` naming the file."""
    try:
        yield
    except OodBenchError:
        raise
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise OodBenchError(f"cannot read {path}: {error}") from None


def print_results(results: dict[str, Any]) -> None:
    """A rich table of the headline numbers (percentages, as leaderboards print them)."""
    from rich.console import Console
    from rich.table import Table

    pixel = results["pixel"]
    table = Table(title=f"oodbench metrics · {results['n_frames']} frames · "
                        f"spec v{results['metric_spec_version']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("AUROC (%)", f"{100 * pixel['auroc']:.3f}")
    table.add_row("AP (%)", f"{100 * pixel['ap']:.3f}")
    table.add_row(f"FPR@95 (%, {results['settings']['fpr_at']})", f"{100 * pixel['fpr95']:.3f}")
    table.add_row("threshold at 95 % TPR", f"{pixel['threshold_at_95']:.6g}")
    table.add_row("OOD / ID pixels", f"{pixel['n_pos']} / {pixel['n_neg']}")
    if not results["settings"]["exact"]:
        bound = pixel["error_bound"]
        table.add_row("certified bound AUROC / AP / FPR@95 (%)",
                      " / ".join(f"{100 * bound[key]:.2g}" for key in ("auroc", "ap", "fpr95")))
    if "components" in results:
        comp = results["components"]
        table.add_row("component threshold", f"{comp['threshold']:.6g}")
        table.add_row("sIoU gt (%)", f"{100 * comp['siou_gt']:.3f}")
        table.add_row("PPV (%)", f"{100 * comp['ppv']:.3f}")
        table.add_row("mean F1 (%)", f"{100 * comp['f1_mean']:.3f}")
        table.add_row("GT / predicted components", f"{comp['n_gt']} / {comp['n_pred']}")
    Console().print(table)


def to_json(value: Any) -> Any:
    """Plain JSON types: arrays to lists, numpy scalars to Python, NaN to null."""
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, np.ndarray | np.generic):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
