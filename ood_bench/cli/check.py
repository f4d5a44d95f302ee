"""``oodbench check``: compare metric numbers with a golden file (exit 1 on drift)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("check")
@click.option("--golden", type=click.Path(path_type=Path), required=True,
              help="Golden JSON file (config + expected metrics).")
@click.option("--results", type=click.Path(path_type=Path), default=None,
              help="Compare the results.jsonl in this folder instead of recomputing.")
@click.option("--rtol", type=click.FloatRange(min=0), default=None,
              help="Relative tolerance (default: the golden file's, else 1e-4).")
@click.option("--atol", type=click.FloatRange(min=0), default=None,
              help="Absolute tolerance (default: the golden file's, else 1e-4).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Keep the recomputed stores and results here (default: a temporary folder).")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Folder holding the dataset folders (for non-synthetic golden configs).")
@click.option("--update", is_flag=True,
              help="Rewrite the golden file with the new numbers and print what changed.")
@click.option("--all", "show_all", is_flag=True, help="List every compared number.")
def check(golden: Path, results: Path | None, rtol: float | None, atol: float | None,
          out: Path | None, data_root: Path | None, update: bool, show_all: bool) -> None:
    """Recompute the golden file's configuration (or read --results) and compare the metrics.

    Exit 0 when every number is within tolerance, 1 on drift or a missing number, 2 on bad
    input. Refresh deliberately with --update after an intended change.
    """
    from rich.console import Console

    from ood_bench import golden as gold
    from ood_bench.cli.run import ProgressBar, widen
    from ood_bench.results import read_rows

    console = Console()
    widen(console)
    reference = gold.load_golden(golden)
    tolerance = {**gold.DEFAULT_TOLERANCE,
                 **{k: reference[k] for k in gold.DEFAULT_TOLERANCE if k in reference}}
    rtol = tolerance["rtol"] if rtol is None else rtol
    atol = tolerance["atol"] if atol is None else atol
    if results is not None:
        rows = read_rows(results)
        if not rows:
            from ood_bench.errors import DataNotFoundError

            raise DataNotFoundError(f"no results in {str(results)!r} (results.jsonl missing)")
    else:
        with ProgressBar(Console(stderr=True)) as progress:
            rows = gold.recompute(reference, out, progress, data_root)
    differences = gold.compare(reference.get("results", []), rows, rtol, atol)
    if update:
        gold.write_golden(golden, gold.updated_golden(reference, rows))
        changed = [d for d in differences if d.status != "ok" or d.expected != d.actual]
        _print(console, changed, f"{len(changed)} numbers changed; updated {golden}")
        return
    shown = differences if show_all else [d for d in differences if d.status != "ok"]
    bad = gold.failed(differences)
    n_ok = sum(d.status == "ok" for d in differences)
    verdict = "DRIFT" if bad else "OK"
    _print(console, shown, f"{verdict}: {n_ok}/{len(differences)} numbers within rtol={rtol:g}, "
                           f"atol={atol:g}")
    if bad:
        raise click.exceptions.Exit(1)


def _print(console, differences, title: str) -> None:
    from rich.table import Table

    if differences:
        table = Table()
        for column in ("model", "method", "dataset", "metric", "golden", "actual", "diff",
                       "status"):
            table.add_column(column, justify="right" if column in ("golden", "actual", "diff")
                             else "left")
        for d in differences:
            diff = (d.actual - d.expected) if None not in (d.actual, d.expected) else None
            style = {"ok": "green", "new": "cyan"}.get(d.status, "bold red")
            table.add_row(*d.key, d.metric, _fmt(d.expected), _fmt(d.actual), _fmt(diff, True),
                          f"[{style}]{d.status}[/]")
        console.print(table)
    console.print(title, soft_wrap=True)


def _fmt(value, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.3g}" if signed else f"{value:.6f}"
