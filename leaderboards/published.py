"""Published results as data: the numbers of the paper's Tables 1-4, one CSV row per cell.

``published/*.csv`` hold one row per printed number with the columns of :data:`COLUMNS`:
``value`` is the number exactly as printed (percent, as a string, so ``88.7`` stays ``88.7``),
``method`` the normalised method name (the toolkit's registry name where one exists, see
:data:`METHOD_ALIASES`), ``dataset`` the toolkit's dataset name (see :data:`DATASET_DISPLAY`) and
``metric`` one of ``auroc``, ``ap``, ``fpr95``, ``miou``, ``macc`` (the ``results.jsonl`` column
names). Cells printed as "-" are not stored.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources

from ood_bench.errors import OodBenchError, UnknownNameError

#: Columns of every published CSV, in file order.
COLUMNS = ("table", "source", "method", "method_display", "backbone", "dataset", "metric",
           "value", "notes")

#: How papers print method names -> the normalised name used in published CSVs and results.
METHOD_ALIASES: dict[str, str] = {
    "maximum softmax": "msp",
    "max softmax": "msp",
    "msp": "msp",
    "odin": "odin",
    "mahalanobis": "mahalanobis",
    "image resynthesis": "image-resynthesis",
    "synboost": "synboost",
    "maximized entropy": "maximized-entropy",
    "pebal": "pebal",
    "dense hybrid": "densehybrid",
    "densehybrid": "densehybrid",
    "rpl": "rpl",
    "rpl+corocl": "rpl",
    "ours": "cgaug",
    "cg-aug": "cgaug",
    "cg-aug (ours)": "cgaug",
    "mask2anomaly": "mask2anomaly",
    "m2a": "mask2anomaly",
    "rba": "rba",
    "m2f-eam": "m2f-eam",
    "baseline": "baseline",
    "ruleaug": "ruleaug",
    "robustnet": "robustnet",
    "ood + ruleaug": "ood+ruleaug",
    "poc (ss)": "poc",
    "ds or ss": "cgaug-ds-or-ss",
    "ds and ss": "cgaug-ds-and-ss",
    "poc": "poc",
}

#: Toolkit dataset name -> the name papers print (column group headers).
DATASET_DISPLAY: dict[str, str] = {
    "roadanomaly": "RoadAnomaly",
    "smiyc-ra21": "SMIYC-RA21 (all)",
    "smiyc-ra21-test": "SMIYC-RA21",
    "smiyc-ra21-val": "SMIYC-RA Val",
    "smiyc-ro21": "SMIYC-RO21 (all)",
    "smiyc-ro21-test": "SMIYC-RO21",
    "smiyc-ro21-val": "SMIYC-RO Val",
    "acdc-poc": "ACDC-POC",
    "muad-challenge-test-ood": "MUAD",
    "fs-laf-val": "FS L&F",
    "fs-static-val": "FS Static",
    "lostandfound-test": "LostAndFound",
}


@dataclass(frozen=True)
class PublishedTable:
    """One table of a paper: where it comes from and what it shows."""

    name: str
    source: str
    caption: str


#: Every published table shipped with the toolkit.
TABLES: dict[str, PublishedTable] = {
    "table1": PublishedTable(
        "table1", "gao2024generalize",
        "Anomaly segmentation on RoadAnomaly, SMIYC-RA21 and SMIYC-RO21 (Gao et al. 2024, Table 1)",
    ),
    "table2": PublishedTable(
        "table2", "gao2024generalize",
        "Anomaly and domain-generalised segmentation on ACDC-POC and MUAD "
        "(Gao et al. 2024, Table 2)",
    ),
    "table3": PublishedTable(
        "table3", "gao2024generalize",
        "Impact of CG-Aug and the training strategy, Mask2Former (Gao et al. 2024, Table 3)",
    ),
    "table4": PublishedTable(
        "table4", "gao2024generalize",
        "Ablation of CG-Aug, Mask2Former on RoadAnomaly (Gao et al. 2024, Table 4)",
    ),
}


def normalise_method(name: str) -> str:
    """The normalised method name for a printed one (``"Maximum softmax [21]"`` -> ``msp``).

    Citation brackets and case are dropped; names without an alias are lower-cased as they are.
    """
    bare = name.split("[")[0].strip().lower()
    return METHOD_ALIASES.get(bare, bare)


def dataset_display(dataset: str) -> str:
    """The printed name of a toolkit dataset (the name itself when papers have none)."""
    return DATASET_DISPLAY.get(dataset, dataset)


def load_published(table: str | None = None) -> list[dict[str, str]]:
    """Rows of the shipped published CSVs (all tables, or one of :data:`TABLES`), in file order."""
    if table is not None and table not in TABLES:
        raise UnknownNameError(
            f"unknown published table {table!r}; valid tables: {', '.join(TABLES)}"
        )
    rows: list[dict[str, str]] = []
    folder = resources.files("ood_bench.leaderboards") / "published"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".csv"):
            rows.extend(_read_csv(entry.name, entry.read_text(encoding="utf-8")))
    return [row for row in rows if table is None or row["table"] == table]


def _read_csv(name: str, text: str) -> list[dict[str, str]]:
    """Parse and validate one published CSV (a broken shipped file is a packaging bug)."""
    reader = csv.DictReader(text.splitlines())
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise OodBenchError(f"published/{name}: columns {reader.fieldnames}, expected {COLUMNS}")
    rows = list(reader)
    for line, row in enumerate(rows, start=2):
        try:
            float(row["value"])
        except ValueError:
            raise OodBenchError(
                f"published/{name} line {line}: value {row['value']!r} is not a number"
            ) from None
    return rows
