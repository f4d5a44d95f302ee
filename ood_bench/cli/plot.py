"""``oodbench plot``: ROC / PR curves and uncertainty-map grids from score stores."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import DataNotFoundError, OodBenchError
from .table import split_names

_STORE_HELP = "Score store(s) of `oodbench run` (<model>__<method>__<dataset>.h5). Repeatable."


def _store_options(command):
    """The options that pick score stores, shared by every plot."""
    options = [
        click.option("--store", "stores", multiple=True, type=click.Path(path_type=Path),
                     help=_STORE_HELP),
        click.option("--results", "results_dir", type=click.Path(path_type=Path),
                     help="Or: a run's --out folder; its results.jsonl names the stores."),
        click.option("--dataset", help="With --results: the dataset to plot."),
        click.option("--methods", multiple=True, metavar="NAMES",
                     help="With --results: only these methods (comma-separated or repeated)."),
        click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
                     help="Output figure: .png or .pdf."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def resolve_stores(
    stores: tuple[Path, ...], results_dir: Path | None, dataset: str | None,
    methods: tuple[str, ...],
) -> tuple[str, dict[str, Path]]:
    """The dataset and the stores to plot, keyed by legend label (method, plus model if
    several models ran the same method)."""
    from ood_bench.plots import parse_store_name

    if bool(stores) == (results_dir is not None):
        raise OodBenchError("give either --store FILE (repeatable) or --results DIR --dataset NAME")
    paths = list(stores) if stores else _stores_from_results(results_dir, dataset, methods)
    names = [parse_store_name(path) for path in paths]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise DataNotFoundError(f"score store(s) {', '.join(missing)} do not exist")
    datasets = sorted({name.dataset for name in names})
    if len(datasets) > 1:
        raise OodBenchError(f"the stores hold different datasets ({', '.join(datasets)}); "
                            "a plot compares methods on one dataset")
    methods_seen = [name.method for name in names]
    labels = {}
    for name, path in zip(names, paths, strict=True):
        label = name.method if methods_seen.count(name.method) == 1 else (
            f"{name.method} ({name.model})")
        labels[label] = path
    return datasets[0], labels


def _stores_from_results(
    results_dir: Path, dataset: str | None, methods: tuple[str, ...]
) -> list[Path]:
    from ood_bench.leaderboards.tables import load_results

    results = load_results(results_dir)
    available = sorted(results["dataset"].unique())
    if dataset is None:
        if len(available) != 1:
            raise OodBenchError(f"--results holds several datasets; pick one with --dataset: "
                                f"{', '.join(available)}")
        dataset = available[0]
    if dataset not in available:
        raise OodBenchError(f"no results for dataset {dataset!r} in {results_dir}; datasets "
                            f"there: {', '.join(available)}")
    rows = results[results["dataset"] == dataset]
    wanted = split_names(methods)
    if wanted:
        unknown = sorted(set(wanted) - set(rows["method"]))
        if unknown:
            raise OodBenchError(f"no results for method(s) {unknown} on {dataset!r}; methods "
                                f"there: {', '.join(sorted(set(rows['method'])))}")
        rows = rows[rows["method"].isin(wanted)]
    if "store" not in rows.columns or rows["store"].isna().any():
        raise OodBenchError(f"{results_dir}/results.jsonl does not name the score store of "
                            f"every {dataset!r} result (column 'store')")
    if "finished" in rows.columns:
        rows = rows.sort_values("finished", kind="stable")
    rows = rows.drop_duplicates(["model", "method"], keep="last")
    return [_locate_store(Path(path), results_dir) for path in rows["store"]]


def _locate_store(path: Path, results_dir: Path) -> Path:
    """A store path from results.jsonl: as written (absolute or relative to the working
    folder of the run), else under the results folder's ``stores/`` (a moved or copied
    folder)."""
    moved = results_dir / "stores" / path.name
    return moved if not path.is_file() and moved.is_file() else path


@click.group("plot")
def plot() -> None:
    """Figures from score stores: ROC/PR curves and uncertainty-map grids."""


@plot.command("curves")
@_store_options
def curves(stores, results_dir, dataset, methods, out) -> None:
    """ROC and precision-recall curves of several methods on one dataset.

    The curves are the metric engine's (the pooled pixels the reported AUROC/AP come from).
    """
    from ood_bench.plots import figure_format, save_curves, store_curves

    figure_format(out)  # fail before reading any data
    dataset, labelled = resolve_stores(stores, results_dir, dataset, methods)
    save_curves({label: store_curves(path) for label, path in labelled.items()}, out,
                title=dataset)
    click.echo(f"wrote {out}", err=True)


@plot.command("maps")
@_store_options
@click.option("--frames", "count", default=4, show_default=True,
              help="Number of frames (spread evenly over the dataset).")
@click.option("--frame", "frame_names", multiple=True, metavar="NAME",
              help="Show these frames instead (repeatable).")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding the dataset folders (default: $OODBENCH_DATA or ./data); "
                   "the images are read from there.")
@click.option("--cell-height", default=192, show_default=True, help="Pixels per grid cell.")
def maps(stores, results_dir, dataset, methods, out, count, frame_names, data_root,
         cell_height) -> None:
    """Uncertainty maps, the paper's Figure 3 layout: a column per frame; rows image, ground
    truth and each method's score map."""
    from ood_bench.plots import (
        figure_format,
        frame_images,
        save_grid,
        select_frames,
        store_dataset,
        uncertainty_grid,
    )

    figure_format(out)  # fail before reading any data
    _, labelled = resolve_stores(stores, results_dir, dataset, methods)
    frames = select_frames(labelled, count, frame_names)
    source = store_dataset(next(iter(labelled.values())), data_root)
    images = frame_images(source, next(iter(frames.values())))
    save_grid(uncertainty_grid(images, frames, cell_height), out)
    click.echo(f"wrote {out}", err=True)
