"""``oodbench table``: paper-style tables of local results and/or the paper's published numbers."""

from __future__ import annotations

from pathlib import Path

import click

from ..io import atomic_write

#: Where ``oodbench run`` writes by default (its ``--out``).
DEFAULT_RESULTS = Path("runs")


def split_names(values: tuple[str, ...]) -> list[str]:
    """Names given as repeated options and/or comma-separated lists, in order, without blanks."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


@click.command("table")
@click.option("--results", "results_dir", type=click.Path(path_type=Path),
              help="Folder holding the results.jsonl of `oodbench run --out` "
                   "[default: runs, when --published is not given].")
@click.option("--published", metavar="NAME",
              help="A published table to show beside the results: table1, table2, table3, table4.")
@click.option("--datasets", multiple=True, metavar="NAMES",
              help="Column groups to show, in this order (comma-separated or repeated).")
@click.option("--metrics", multiple=True, metavar="NAMES",
              help="Metrics to show: auroc, ap, fpr95, miou, macc, siou_gt, ppv, f1_mean.")
@click.option("--format", "fmt", type=click.Choice(["latex", "markdown", "csv"]),
              default="markdown", show_default=True, help="Output format.")
@click.option("--standalone", is_flag=True,
              help="LaTeX only: a complete document that compiles on its own (pdflatex).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the table to this file (default: print it).")
def table(
    results_dir: Path | None,
    published: str | None,
    datasets: tuple[str, ...],
    metrics: tuple[str, ...],
    fmt: str,
    standalone: bool,
    out: Path | None,
) -> None:
    """Print the paper-style table: rows grouped by backbone, columns by dataset.

    Values are percent; best per column within each backbone group in bold, second
    underlined; rows of this run are marked with a dagger. Give --results, --published or both.
    """
    from ood_bench.leaderboards.tables import build_table, load_results, render

    if results_dir is None and published is None:
        results_dir = DEFAULT_RESULTS
    results = load_results(results_dir) if results_dir is not None else None
    built = build_table(published, results, split_names(datasets), split_names(metrics))
    text = render(built, fmt, standalone)
    if out is None:
        click.echo(text, nl=False)
        return
    with atomic_write(out, "w") as handle:
        handle.write(text)
    click.echo(f"wrote {out}", err=True)
