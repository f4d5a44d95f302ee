"""``oodbench run``: score methods on datasets into resumable stores and print the metrics.

Works under ``torchrun --nproc_per_node=K oodbench run ...``: frames are sharded over the ranks
and the numbers equal a one-process run's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def parse_options(pairs: tuple[str, ...], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as a dict; values are read as JSON when they parse (``3``, ``true``,
    ``[1, 2]``), else kept as strings."""
    from ood_bench.errors import OodBenchError

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OodBenchError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def grid_options(function):
    """The model, data and execution options of ``oodbench run``."""
    options = [
        click.option("--model", default=None,
                     help="Registered model (architecture) of --checkpoint; synth-* datasets "
                          "default to the synthetic base model."),
        click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
                     help="Weights to load into --model (.safetensors/.pth)."),
        click.option("--model-option", "model_option", multiple=True, metavar="KEY=VALUE",
                     help="Model constructor option, e.g. width=16 (repeatable)."),
        click.option("--method-option", "method_option", multiple=True, metavar="KEY=VALUE",
                     help="Method option for every --method, e.g. smoothing=true (repeatable)."),
        click.option("--data-root", type=click.Path(path_type=Path), default=None,
                     help="Folder holding the dataset folders (default $OODBENCH_DATA or ./data)."),
        click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu",
                     show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True),
        click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
                     help="DataLoader worker processes reading frames."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed of fitting and scoring (same seed, same numbers)."),
        click.option("--store-dtype", type=click.Choice(["float32", "float16"]),
                     default="float32", show_default=True,
                     help="Score-map dtype in the store (float16 is gzip-compressed)."),
        click.option("--limit", type=click.IntRange(min=1), default=None,
                     help="Only the first N frames of each dataset."),
        click.option("--fit-dataset", default=None,
                     help="Training set of methods that need fitting (default: synth-cityscapes "
                          "for the synthetic model, cityscapes-train otherwise)."),
        click.option("--fit-frames", type=click.IntRange(min=1), default=None,
                     help="Fit on a seeded random subset of N training frames."),
        click.option("--fit-option", "fit_option", multiple=True, metavar="KEY=VALUE",
                     help="Option of the methods' fit, e.g. steps=200 (repeatable)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.command("run")
@click.option("--method", "methods", multiple=True, required=True,
              help="Method name(s); repeat or comma-separate for a grid (see README).")
@click.option("--dataset", "datasets", multiple=True, required=True,
              help="Dataset name(s); repeat or comma-separate for a grid.")
@grid_options
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs"), show_default=True,
              help="Folder of the score stores (stores/) and results.jsonl / results.csv.")
def run(methods, datasets, out, **kwargs) -> None:
    """Run every --method on every --dataset, store the scores, print the metrics table.

    Rerunning the same command resumes: finished frames are skipped and the final numbers are
    those of an uninterrupted run. Example: oodbench run --method msp,energy --dataset
    synth-acdc-poc
    """
    from rich.console import Console

    from ood_bench.runner import parse_grid

    console = Console(stderr=True)
    rows = run_configured(parse_grid(methods), parse_grid(datasets), out, console=console,
                          **kwargs)
    if rows is not None:
        print_results(rows, Console())
        click.echo(f"results: {out / 'results.jsonl'} and {out / 'results.csv'}")


def run_configured(methods: list[str], datasets: list[str], out: Path, *, console, model,
                   checkpoint, model_option, method_option, data_root, device, batch_size,
                   workers, seed, store_dtype, limit, fit_dataset, fit_frames, fit_option):
    """Run a grid from CLI values; rows on rank 0, ``None`` on the other ranks."""
    from ood_bench.distributed import context, shutdown
    from ood_bench.runner import RunOptions, run_grid

    options = RunOptions(out=out, device=device, batch_size=batch_size, workers=workers,
                         seed=seed, store_dtype=store_dtype, limit=limit, data_root=data_root,
                         fit_dataset=fit_dataset, fit_frames=fit_frames,
                         fit_options=parse_options(fit_option, "--fit-option"))
    dist = context(device)
    try:
        with ProgressBar(console, enabled=dist.is_main) as progress:
            rows = run_grid(methods, datasets, options, model=model, checkpoint=checkpoint,
                            model_options=parse_options(model_option, "--model-option"),
                            method_options=parse_options(method_option, "--method-option"),
                            dist=dist, progress=progress)
    finally:
        shutdown(dist)
    return rows if dist.is_main else None


class ProgressBar:
    """A rich progress bar (frames, frames/s, ETA) wired to the runner's callbacks."""

    def __init__(self, console, enabled: bool = True) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class FramesPerSecond(ProgressColumn):
            def render(self, task) -> Text:
                speed = task.finished_speed or task.speed
                return Text(f"{speed:.1f} frames/s" if speed else "- frames/s")

        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            FramesPerSecond(), TimeRemainingColumn(), console=console, disable=not enabled,
        )
        self.task = None

    def __enter__(self):
        from ood_bench.runner import Progress

        self.bar.__enter__()

        def start(description: str, total: int) -> None:
            self.task = self.bar.add_task(description, total=total)

        return Progress(start=start, advance=lambda n: self.bar.advance(self.task, n))

    def __exit__(self, *exc_info) -> None:
        self.bar.__exit__(*exc_info)


def print_results(rows: list[dict[str, Any]], console) -> None:
    """The metrics table: AUROC, AP, FPR@95, mIoU, mAcc (+ SMIYC component metrics), in %."""
    from rich.table import Table

    from ood_bench.runner import COMPONENT_KEYS, PIXEL_KEYS, SEGMENTATION_KEYS

    headers = {"auroc": "AUROC ↑", "ap": "AP ↑", "fpr95": "FPR@95 ↓", "miou": "mIoU ↑",
               "macc": "mAcc ↑", "siou_gt": "sIoU gt ↑", "ppv": "PPV ↑", "f1_mean": "mean F1 ↑"}
    keys = [*PIXEL_KEYS, *SEGMENTATION_KEYS]
    if any(key in row for row in rows for key in COMPONENT_KEYS):
        keys += COMPONENT_KEYS
    widen(console)
    table = Table(title="oodbench results (%)")
    for column in ("model", "method", "dataset"):
        table.add_column(column)
    for key in keys:
        table.add_column(headers[key], justify="right")
    table.add_column("frames", justify="right")
    for row in rows:
        cells = [_percent(row.get(key)) for key in keys]
        table.add_row(row["model"], row["method"], row["dataset"], *cells,
                      str(row.get("n_frames", "")))
    console.print(table)


def widen(console) -> None:
    """Let tables in a log file or pipe use 160 columns instead of squeezing names into 80."""
    if not console.is_terminal:
        console.width = max(console.width, 160)


def _percent(value) -> str:
    if value is None or value != value:  # missing or NaN
        return "-"
    return f"{100 * value:.2f}"
