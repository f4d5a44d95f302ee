"""The tidy results table: one row per model × method × dataset, in ``results.jsonl`` and CSV.

Rows hold metric fractions in [0, 1] (``auroc``, ``ap``, ``fpr95``, ``miou``, ``macc``; SMIYC
splits add ``siou_gt``, ``ppv``, ``f1_mean``), ``n_frames``, the metric spec version, the
config hash, the package version, ``started``/``finished`` UTC timestamps and the store path.
Writing a row replaces an earlier row with the same (model, method, dataset), and both files are
rewritten whole through ``atomic_write``, so a reader never sees a half-written table.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from ood_bench.errors import DataNotFoundError, OodBenchError
from ood_bench.io import atomic_write

JSONL = "results.jsonl"
CSV = "results.csv"
KEY = ("model", "method", "dataset")
#: Metric columns (fractions in [0, 1]; NaN/null where not computable).
METRICS = ("auroc", "ap", "fpr95", "miou", "macc", "siou_gt", "ppv", "f1_mean")
#: Leading columns of the CSV, in this order; other keys follow alphabetically.
COLUMNS = (*KEY, *METRICS, "n_frames", "n_labelled", "metric_spec", "config_hash", "version",
           "started", "finished", "store")


def _plain(value: Any) -> Any:
    """JSON-friendly scalars: numpy numbers to Python, NaN to ``None``."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def read_rows(folder: str | Path) -> list[dict[str, Any]]:
    """The rows of ``<folder>/results.jsonl`` (empty list if there is none yet)."""
    path = Path(folder) / JSONL
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise OodBenchError(f"{str(path)!r} line {number} is not JSON: {error}") from None
    return rows


def append_result(folder: str | Path, row: dict[str, Any]) -> None:
    """Add ``row`` to the table under ``folder`` (replacing the row with the same key)."""
    missing = [key for key in KEY if key not in row]
    if missing:
        raise OodBenchError(f"results row lacks {', '.join(missing)}")
    row = {key: _plain(value) for key, value in row.items()}
    rows = [r for r in read_rows(folder) if tuple(r.get(k) for k in KEY) != _key(row)]
    rows.append(row)
    write_rows(folder, rows)


def _key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in KEY)


def write_rows(folder: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``results.jsonl`` and ``results.csv`` under ``folder`` atomically."""
    folder = Path(folder)
    with atomic_write(folder / JSONL, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
    with atomic_write(folder / CSV, "w") as handle:
        writer = csv.DictWriter(handle, _columns(rows), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """:data:`COLUMNS` present in ``rows``, then the other keys alphabetically."""
    keys = {key for row in rows for key in row}
    return [c for c in COLUMNS if c in keys] + sorted(keys - set(COLUMNS))


def read_results(folder: str | Path):
    """The results table under ``folder`` as a pandas DataFrame (missing metrics are NaN)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataNotFoundError(f"results folder {str(folder)!r} does not exist")
    if not (folder / JSONL).exists():
        raise DataNotFoundError(f"no {JSONL} in {str(folder)!r}: run `oodbench run --out "
                                f"{folder}` first")
    import pandas as pd

    rows = read_rows(folder)
    frame = pd.DataFrame(rows, columns=_columns(rows))
    metrics = [c for c in METRICS if c in frame.columns]
    frame[metrics] = frame[metrics].astype(float)  # NaN (stored as null) stays a float
    return frame
