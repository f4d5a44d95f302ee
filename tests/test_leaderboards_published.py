"""The published numbers: transcribed exactly from the paper (poster) and normalised."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ood_bench.adapters.base import list_datasets
from ood_bench.errors import UnknownNameError
from ood_bench.leaderboards.published import (
    COLUMNS,
    TABLES,
    load_published,
    normalise_method,
)
from ood_bench.leaderboards.tables import METRICS

POSTER = Path("/work/shared/seed/poster.txt")

RA, RA21, RO21 = "roadanomaly", "smiyc-ra21-test", "smiyc-ro21-test"
POC, MUAD = "acdc-poc", "muad-challenge-test-ood"
RA_VAL, RO_VAL = "smiyc-ra21-val", "smiyc-ro21-val"
D, M = "DeepLabv3+", "Mask2Former"

# Cells typed by hand from the poster: (method, backbone, dataset, metric) -> printed value.
TABLE1_CELLS = {
    ("msp", D, RA, "auroc"): "67.53", ("msp", D, RA, "ap"): "15.72",
    ("msp", D, RO21, "fpr95"): "16.60", ("odin", D, RA21, "ap"): "33.06",
    ("odin", D, RO21, "fpr95"): "15.28", ("mahalanobis", D, RA, "fpr95"): "81.09",
    ("mahalanobis", D, RO21, "ap"): "20.90", ("image-resynthesis", D, RA21, "fpr95"): "25.93",
    ("image-resynthesis", D, RO21, "fpr95"): "4.70", ("synboost", D, RA, "auroc"): "81.91",
    ("synboost", D, RO21, "ap"): "71.34", ("maximized-entropy", D, RA, "ap"): "48.85",
    ("maximized-entropy", D, RO21, "fpr95"): "0.75", ("pebal", D, RA, "fpr95"): "44.58",
    ("pebal", D, RO21, "ap"): "4.98", ("densehybrid", D, RA21, "fpr95"): "9.81",
    ("densehybrid", D, RO21, "fpr95"): "0.24", ("rpl", D, RA, "auroc"): "95.72",
    ("rpl", D, RA21, "ap"): "83.49", ("cgaug", D, RA, "ap"): "74.60",
    ("cgaug", D, RA21, "fpr95"): "8.21", ("cgaug", D, RO21, "ap"): "90.71",
    ("mask2anomaly", M, RA21, "ap"): "88.7", ("mask2anomaly", M, RO21, "ap"): "93.3",
    ("rba", M, RA, "fpr95"): "6.92", ("m2f-eam", M, RA21, "fpr95"): "4.09",
    ("cgaug", M, RA, "auroc"): "97.94", ("cgaug", M, RO21, "fpr95"): "0.07",
}
TABLE2_CELLS = {
    ("baseline", D, POC, "ap"): "3.92", ("baseline", D, MUAD, "macc"): "68.63",
    ("ruleaug", D, POC, "fpr95"): "72.79", ("ruleaug", D, MUAD, "ap"): "0.99",
    ("robustnet", D, POC, "macc"): "82.41", ("robustnet", D, MUAD, "miou"): "32.18",
    ("pebal", D, POC, "ap"): "20.67", ("pebal", D, MUAD, "fpr95"): "47.56",
    ("rpl", D, POC, "fpr95"): "1.20", ("rpl", D, MUAD, "macc"): "71.60",
    ("ood+ruleaug", D, POC, "macc"): "73.08", ("ood+ruleaug", D, MUAD, "ap"): "20.97",
    ("cgaug", D, POC, "miou"): "54.12", ("cgaug", D, MUAD, "fpr95"): "18.74",
    ("mask2anomaly", M, POC, "ap"): "73.77", ("mask2anomaly", M, MUAD, "miou"): "23.43",
    ("ood+ruleaug", M, POC, "fpr95"): "0.79", ("ood+ruleaug", M, MUAD, "macc"): "67.51",
    ("cgaug", M, POC, "ap"): "90.42", ("cgaug", M, POC, "fpr95"): "0.46",
    ("cgaug", M, MUAD, "ap"): "45.65", ("cgaug", M, MUAD, "macc"): "73.77",
}
# Tables 3 and 4 are small: every cell.
TABLE3_CELLS = {
    (method, M, dataset, metric): value
    for method, values in {
        "mask2anomaly": ("79.70", "13.45", "94.50", "3.30", "88.60", "0.30"),
        "mask2anomaly+cgaug": ("85.47", "22.38", "97.96", "1.55", "89.80", "0.12"),
        "cgaug": ("90.17", "7.54", "97.31", "1.04", "93.24", "0.14"),
    }.items()
    for (dataset, metric), value in zip(
        [(d, m) for d in (RA, RA_VAL, RO_VAL) for m in ("ap", "fpr95")], values, strict=True
    )
}
TABLE4_CELLS = {
    (method, M, RA, metric): value
    for method, values in {
        "poc": ("95.43", "83.66", "10.33"),
        "cgaug-ds-or-ss": ("95.90", "87.64", "9.28"),
        "cgaug-ds-and-ss": ("96.47", "89.08", "8.16"),
        "cgaug": ("97.94", "90.17", "7.54"),
    }.items()
    for metric, value in zip(("auroc", "ap", "fpr95"), values, strict=True)
}
HAND_CELLS = {"table1": TABLE1_CELLS, "table2": TABLE2_CELLS, "table3": TABLE3_CELLS,
              "table4": TABLE4_CELLS}
# Printed cells per table (the "-" cells of Table 1 are not stored).
CELL_COUNTS = {"table1": 14 * 7 - 11, "table2": 10 * 8, "table3": 3 * 6, "table4": 4 * 3}


def _cells(table: str) -> dict[tuple[str, str, str, str], str]:
    cells = {}
    for row in load_published(table):
        key = (row["method"], row["backbone"], row["dataset"], row["metric"])
        assert key not in cells, f"duplicate cell {key}"
        cells[key] = row["value"]
    return cells


@pytest.mark.parametrize("table", sorted(HAND_CELLS))
def test_hand_picked_cells_match(table):
    cells = _cells(table)
    assert len(cells) == CELL_COUNTS[table]
    assert len(HAND_CELLS[table]) >= min(20, CELL_COUNTS[table])
    for key, value in HAND_CELLS[table].items():
        assert cells.get(key) == value, key


def test_rows_are_well_formed():
    rows = load_published()
    assert len(rows) == sum(CELL_COUNTS.values())
    registered = set(list_datasets())
    for row in rows:
        assert tuple(row) == COLUMNS
        assert row["table"] in TABLES and row["source"] == TABLES[row["table"]].source
        assert row["dataset"] in registered, row
        assert row["metric"] in METRICS, row
        assert row["backbone"] in {D, M}
        assert re.fullmatch(r"\d+\.\d+", row["value"]), row


def _poster_rows(text: str, header: str, n_values: int) -> list[list[str]]:
    """The value cells of the rows after the first line starting with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 1:]:
        tokens = line.rstrip("\t").split("\t")
        values = [t for t in tokens if re.fullmatch(r"-|\d+\.\d+", t)]
        if len(values) < n_values:
            if rows:
                break
            continue
        rows.append(values[-n_values:])
    return rows


@pytest.mark.skipif(not POSTER.exists(), reason=f"{POSTER} (the seed poster) is not here")
@pytest.mark.parametrize(
    "table, header, n_values",
    [("table1", "Method\tBackbone\tRoadAnomaly", 7), ("table2", "Method\tBackbone\tTechnique", 8),
     ("table3", "Training\tAug.", 6), ("table4", "\tAUC", 3)],
)
def test_every_cell_matches_the_poster(table, header, n_values):
    """Re-parse the poster's tab-separated rows and compare them, row by row, with the CSV."""
    poster = _poster_rows(POSTER.read_text(encoding="utf-8"), header, n_values)
    rows: dict[tuple[str, str, str], list[str]] = {}
    columns: list[tuple[str, str]] = []
    for row in load_published(table):
        rows.setdefault((row["backbone"], row["method"], row["method_display"]), [])
        if (row["dataset"], row["metric"]) not in columns:
            columns.append((row["dataset"], row["metric"]))
    values = {(r["backbone"], r["method"], r["method_display"], r["dataset"], r["metric"]):
              r["value"] for r in load_published(table)}
    ours = [[values.get((*key, *column), "-") for column in columns] for key in rows]
    assert len(columns) == n_values
    assert ours == poster


@pytest.mark.parametrize(
    "printed, name",
    [("Maximum softmax [21]", "msp"), ("Mahalanobis [26]", "mahalanobis"),
     ("RPL+CoroCL [31]", "rpl"), ("Ours", "cgaug"), ("Mask2Anomaly [42]", "mask2anomaly"),
     ("RbA [36]", "rba"), ("Baseline [7]", "baseline"), ("OOD + RuleAug [45]", "ood+ruleaug"),
     ("Dense Hybrid [17]", "densehybrid"), ("CG-Aug (Ours)", "cgaug"), ("energy", "energy")],
)
def test_normalise_method(printed, name):
    assert normalise_method(printed) == name


def test_stored_names_are_the_normalised_display_names():
    for row in load_published():
        if row["table"] != "table3":  # Table 3 names a training/augmentation pair
            assert normalise_method(row["method_display"]) == row["method"], row


def test_unknown_table_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid tables: table1, table2, table3, table4"):
        load_published("table9")
