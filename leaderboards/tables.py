"""Paper-style result tables: one table model, rendered as LaTeX (booktabs), markdown or CSV.

Rows are grouped by backbone, columns by dataset. Published rows (the paper's numbers, as
printed) and local rows (this run's ``results.jsonl``, fractions shown as percent with two
decimals) sit side by side; local rows come after the published ones of their backbone group
and are marked (a dagger in LaTeX and markdown, ``source = "this run"`` everywhere).

Best and second-best values are ranked per column **within each backbone group** (as the paper
bolds the best result per backbone), over published and local rows together, on the values as
displayed; ties share a rank. Best is bold, second underlined; a column with fewer than two
values in a group is not ranked.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ood_bench.errors import DataNotFoundError, OodBenchError, UnknownNameError

from .published import TABLES, dataset_display, load_published, normalise_method


@dataclass(frozen=True)
class Metric:
    """A table column metric: its ``results.jsonl`` name, printed labels and direction.

    The LaTeX header is ``latex`` followed by ``$<subscript><arrow>$``.
    """

    name: str
    label: str
    latex: str
    higher_is_better: bool
    subscript: str = ""

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


#: Every metric a table can show, in column order.
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("auroc", "AUROC", "AUROC", True),
        Metric("ap", "AP", "AP", True),
        Metric("fpr95", "FPR@95", "FPR", False, "_{95}"),
        Metric("miou", "mIoU", "mIoU", True),
        Metric("macc", "mAcc", "mAcc", True),
        Metric("siou_gt", "sIoU gt", "sIoU", True, "_{gt}"),
        Metric("ppv", "PPV", "PPV", True),
        Metric("f1_mean", "mean F1", "mean F1", True),
    )
}

#: Marker and ``source`` of rows that come from local results rather than a paper.
THIS_RUN = "this run"

#: Backbone groups come in this order; other backbones follow in order of appearance.
BACKBONE_ORDER = ("DeepLabv3+", "Mask2Former")

Column = tuple[str, str]  # (dataset, metric)


@dataclass
class Row:
    """One table row: printed cell texts keyed by column (absent = not reported)."""

    method: str
    display: str
    backbone: str
    source: str
    cells: dict[Column, str] = field(default_factory=dict)

    @property
    def local(self) -> bool:
        """Whether the row comes from local results."""
        return self.source == THIS_RUN


@dataclass
class Table:
    """Rows grouped by backbone (published rows first in each group) over ``columns``."""

    caption: str
    columns: list[Column]
    groups: list[tuple[str, list[Row]]]

    @property
    def datasets(self) -> list[tuple[str, list[str]]]:
        """Column groups: each dataset with its metrics, in column order."""
        grouped: dict[str, list[str]] = {}
        for dataset, metric in self.columns:
            grouped.setdefault(dataset, []).append(metric)
        return list(grouped.items())

    def ranks(self) -> dict[tuple[int, Column], int]:
        """``(id(row), column) -> 1`` (best) or ``2`` (second), per column within each group."""
        ranks: dict[tuple[int, Column], int] = {}
        for _, rows in self.groups:
            for column in self.columns:
                better = METRICS[column[1]].higher_is_better
                values = {id(r): float(r.cells[column]) for r in rows if column in r.cells}
                if len(values) < 2:
                    continue
                distinct = sorted({round(v, 2) for v in values.values()}, reverse=better)
                for row_id, value in values.items():
                    position = distinct.index(round(value, 2)) + 1
                    if position <= 2:
                        ranks[(row_id, column)] = position
        return ranks


def model_backbone(model: str) -> str:
    """The backbone group of a local model name (``deeplabv3plus-r101`` -> ``DeepLabv3+``)."""
    if model.startswith("deeplabv3plus"):
        return "DeepLabv3+"
    if model.startswith("mask2former"):
        return "Mask2Former"
    return model


def load_results(folder: str | Path):
    """The runner's results table under ``folder`` (a DataFrame); refuses an empty one."""
    from ood_bench.results import JSONL, read_results

    results = read_results(folder)
    if results.empty:
        raise DataNotFoundError(f"no results in {str(folder)!r}: {JSONL} has no rows")
    missing = {"model", "method", "dataset"} - set(results.columns)
    if missing:
        raise OodBenchError(f"{Path(folder) / JSONL} lacks the columns {sorted(missing)}")
    return results


def published_rows(table: str) -> tuple[list[Row], list[Column]]:
    """Rows and columns (in the paper's order) of a published table."""
    rows: dict[tuple[str, str, str], Row] = {}
    columns: list[Column] = []
    for cell in load_published(table):
        key = (cell["backbone"], cell["method"], cell["method_display"])
        row = rows.setdefault(
            key, Row(cell["method"], cell["method_display"], cell["backbone"], cell["source"])
        )
        column = (cell["dataset"], cell["metric"])
        row.cells[column] = cell["value"]
        if column not in columns:
            columns.append(column)
    return list(rows.values()), columns


def result_rows(results) -> tuple[list[Row], list[Column]]:
    """Rows and columns of local results (latest line per model x method x dataset)."""
    if "finished" in results.columns:
        results = results.sort_values("finished", kind="stable")
    latest = results.drop_duplicates(["model", "method", "dataset"], keep="last")
    metrics = [m for m in METRICS if m in latest.columns]
    multi_model = latest.groupby(latest["model"].map(model_backbone))["model"].nunique()
    rows: dict[tuple[str, str], Row] = {}
    columns: list[Column] = []
    for record in latest.to_dict("records"):
        model, backbone = str(record["model"]), model_backbone(str(record["model"]))
        method = normalise_method(str(record["method"]))
        display = method if multi_model[backbone] == 1 else f"{method} ({model})"
        row = rows.setdefault((model, method), Row(method, display, backbone, THIS_RUN))
        for metric in metrics:
            value = record.get(metric)
            if value is None or value != value:  # None or NaN: not measured
                continue
            column = (str(record["dataset"]), metric)
            row.cells[column] = f"{100 * float(value):.2f}"
            if column not in columns:
                columns.append(column)
    return sorted(rows.values(), key=lambda r: (r.backbone, r.display)), columns


def build_table(
    published: str | None = None,
    results=None,
    datasets: Sequence[str] = (),
    metrics: Sequence[str] = (),
) -> Table:
    """The table of a published table and/or local results, restricted to datasets/metrics.

    Columns: the published table's, then local ones it lacks; metrics of a dataset in
    :data:`METRICS` order. ``datasets`` also sets the column group order.
    """
    if published is None and results is None:
        raise OodBenchError("nothing to tabulate: give local results and/or a published table")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise UnknownNameError(f"unknown metric(s) {unknown}; valid metrics: {', '.join(METRICS)}")
    rows: list[Row] = []
    columns: list[Column] = []
    if published is not None:
        rows, columns = published_rows(published)
    if results is not None:
        local_rows, local_columns = result_rows(results)
        rows += local_rows
        columns += [c for c in local_columns if c not in columns]
    columns = _select_columns(columns, datasets, metrics)
    groups = _group_rows(rows, columns)
    captions = [TABLES[published].caption] if published else ["oodbench results (percent)"]
    if results is not None:
        captions.append(f"\u2020 {THIS_RUN}")
    return Table("; ".join(captions), columns, groups)


def _select_columns(
    columns: list[Column], datasets: Sequence[str], metrics: Sequence[str]
) -> list[Column]:
    available = list(dict.fromkeys(d for d, _ in columns))
    missing = [d for d in datasets if d not in available]
    if missing:
        raise UnknownNameError(
            f"no numbers for dataset(s) {missing}; datasets in this table: {', '.join(available)}"
        )
    order = list(datasets) or available
    chosen = [
        (dataset, metric)
        for dataset in order
        for metric in METRICS
        if (dataset, metric) in columns and (not metrics or metric in metrics)
    ]
    if not chosen:
        present = sorted({m for _, m in columns}, key=list(METRICS).index)
        raise OodBenchError(
            f"no column left for metrics {list(metrics)} on datasets {order}; "
            f"metrics in this table: {', '.join(present)}"
        )
    return chosen


def _group_rows(rows: Iterable[Row], columns: list[Column]) -> list[tuple[str, list[Row]]]:
    """Rows with at least one shown cell, grouped by backbone; published rows first in a group."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        if any(column in row.cells for column in columns):
            groups.setdefault(row.backbone, []).append(row)

    def order(name: str) -> tuple[int, int]:
        known = BACKBONE_ORDER.index(name) if name in BACKBONE_ORDER else len(BACKBONE_ORDER)
        return known, list(groups).index(name)

    ordered = sorted(groups, key=order)
    return [(name, sorted(groups[name], key=lambda r: r.local)) for name in ordered]


# ---------------------------------------------------------------------------------- renderers

_LATEX_SPECIAL = {
    "\\": r"$\backslash$", "&": r"\&", "%": r"\%", "$": r"$\$$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\~{}", "^": r"\^{}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text (method and dataset names)."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def _cell_texts(
    table: Table, row: Row, ranks: dict[tuple[int, Column], int], bold: str, underline: str
) -> list[str]:
    """The row's printed cells, rank 1 formatted with ``bold``, rank 2 with ``underline``."""
    texts = []
    for column in table.columns:
        text = row.cells.get(column, "-")
        rank = ranks.get((id(row), column))
        texts.append(bold.format(text) if rank == 1 else underline.format(text) if rank == 2
                     else text)
    return texts


def render_latex(table: Table, standalone: bool = False) -> str:
    """A booktabs ``table`` environment (or, ``standalone``, a complete article document)."""
    ranks = table.ranks()
    n_columns = 2 + len(table.columns)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(table.caption)}}}".replace("\u2020", r"$^\dagger$"),
        rf"\begin{{tabular}}{{ll{'c' * len(table.columns)}}}",
        r"\toprule",
    ]
    header, rules, start = ["", ""], [], 3
    for dataset, metrics in table.datasets:
        title = latex_escape(dataset_display(dataset))
        header.append(rf"\multicolumn{{{len(metrics)}}}{{c}}{{{title}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + len(metrics) - 1}}}")
        start += len(metrics)
    lines += [" & ".join(header) + r" \\", " ".join(rules)]
    labels = [
        "{}${}\\{}arrow$".format(METRICS[m].latex, METRICS[m].subscript,
                                 "up" if METRICS[m].higher_is_better else "down")
        for _, m in table.columns
    ]
    lines += [" & ".join(["Method", "Backbone", *labels]) + r" \\", r"\midrule"]
    for number, (backbone, rows) in enumerate(table.groups):
        if number:
            lines.append(r"\midrule")
        for index, row in enumerate(rows):
            if index and row.local and not rows[index - 1].local:
                lines.append(rf"\cmidrule(lr){{1-{n_columns}}}")
            name = latex_escape(row.display) + (r"$^\dagger$" if row.local else "")
            cells = _cell_texts(table, row, ranks, r"\textbf{{{}}}", r"\underline{{{}}}")
            group = latex_escape(backbone) if index == 0 else ""
            lines.append(" & ".join([name, group, *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    body = "\n".join(lines) + "\n"
    if not standalone:
        return body
    return (
        "\\documentclass{article}\n\\usepackage{booktabs}\n"
        "\\usepackage[landscape,margin=1.5cm]{geometry}\n\\pagestyle{empty}\n"
        f"\\begin{{document}}\n{body}\\end{{document}}\n"
    )


def render_markdown(table: Table) -> str:
    """A GitHub markdown table: bold best, underlined (``<u>``) second, † marks this run."""
    ranks = table.ranks()
    headers = ["Method", "Backbone"] + [
        f"{dataset_display(d)} {METRICS[m].label} {METRICS[m].arrow}" for d, m in table.columns
    ]
    lines = [f"**{table.caption}**", "", "| " + " | ".join(headers) + " |",
             "|" + "|".join([":--", ":--", *[":-:"] * len(table.columns)]) + "|"]
    for backbone, rows in table.groups:
        for index, row in enumerate(rows):
            name = row.display.replace("|", "\\|") + (" \u2020" if row.local else "")
            cells = _cell_texts(table, row, ranks, "**{}**", "<u>{}</u>")
            lines.append("| " + " | ".join([name, backbone if index == 0 else "", *cells]) + " |")
    return "\n".join(lines) + "\n"


def render_csv(table: Table) -> str:
    """One CSV line per row: backbone, method, display name, source, then one column per cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["backbone", "method", "method_display", "source",
                     *[f"{d}/{m}" for d, m in table.columns]])
    for backbone, rows in table.groups:
        for row in rows:
            writer.writerow([backbone, row.method, row.display, row.source,
                             *[row.cells.get(c, "") for c in table.columns]])
    return buffer.getvalue()


#: ``--format`` name -> renderer.
FORMATS = {"latex": render_latex, "markdown": render_markdown, "csv": render_csv}


def render(table: Table, fmt: str, standalone: bool = False) -> str:
    """Render ``table`` in one of :data:`FORMATS` (``standalone`` applies to LaTeX only)."""
    if fmt not in FORMATS:
        raise UnknownNameError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if fmt == "latex":
        return render_latex(table, standalone)
    return FORMATS[fmt](table)
