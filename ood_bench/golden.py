"""Regression checks of metric numbers against a golden JSON file (``oodbench check``).

A golden file records a run configuration (model, methods, datasets, frame limit, seeds) and the
metrics it produced::

    {"format": "oodbench-golden", "version": 1, "metric_spec": "1",
     "config": {"methods": [...], "datasets": [...], "limit": 8, "seed": 0, ...},
     "rtol": 1e-4, "atol": 1e-4,
     "results": [{"model": ..., "method": ..., "dataset": ..., "auroc": ..., ...}, ...]}

:func:`compare` matches rows by (model, method, dataset) and metrics with
``|actual - expected| <= atol + rtol * |expected|`` (NaN, stored as null, equals NaN); a
missing row or metric is drift. :func:`recompute` reruns the recorded configuration;
:func:`updated_golden` writes new numbers (only ever on request: ``oodbench check --update``).
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ood_bench.errors import DataNotFoundError, OodBenchError
from ood_bench.io import atomic_write
from ood_bench.metrics.spec import METRIC_SPEC_VERSION
from ood_bench.results import KEY, METRICS

FORMAT = "oodbench-golden"
VERSION = 1
DEFAULT_TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}
#: Run settings a golden config may hold (the keyword arguments of ``oodbench run``).
CONFIG_KEYS = ("methods", "datasets", "model", "checkpoint", "model_options", "method_options",
               "limit", "seed", "batch_size", "store_dtype", "fit_dataset", "fit_frames",
               "fit_options")


@dataclass
class Difference:
    """One compared number: ``status`` is ``ok``, ``drift``, ``missing`` or ``new``."""

    key: tuple[str, str, str]
    metric: str
    expected: float | None
    actual: float | None
    status: str


def load_golden(path: str | Path) -> dict[str, Any]:
    """Read and validate a golden file (clear errors naming the file)."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"golden file {str(path)!r} does not exist")
    try:
        golden = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise OodBenchError(f"golden file {str(path)!r} is not JSON: {error}") from None
    if not isinstance(golden, dict) or golden.get("format") != FORMAT:
        raise OodBenchError(f"golden file {str(path)!r} lacks \"format\": \"{FORMAT}\"")
    config = golden.get("config")
    if not isinstance(config, dict) or not config.get("methods") or not config.get("datasets"):
        raise OodBenchError(f"golden file {str(path)!r} needs a config with methods and datasets")
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise OodBenchError(f"golden file {str(path)!r}: unknown config keys {unknown}; "
                            f"valid: {', '.join(CONFIG_KEYS)}")
    results = golden.get("results", [])
    if not isinstance(results, list) or any(
            not isinstance(r, dict) or any(k not in r for k in KEY) for r in results):
        raise OodBenchError(f"golden file {str(path)!r}: results must be rows with "
                            f"{', '.join(KEY)}")
    if str(golden.get("metric_spec", METRIC_SPEC_VERSION)) != METRIC_SPEC_VERSION:
        raise OodBenchError(
            f"golden file {str(path)!r} holds metric spec v{golden['metric_spec']} numbers, this "
            f"oodbench computes v{METRIC_SPEC_VERSION}; refresh it with --update"
        )
    return golden


def _number(value: Any) -> float | None:
    """A metric as float, ``None`` for missing and NaN (a metric with nothing to average)."""
    if value is None or math.isnan(float(value)):
        return None
    return float(value)


def _close(expected: float | None, actual: float | None, rtol: float, atol: float) -> bool:
    if expected is None or actual is None:
        return expected is actual
    return abs(actual - expected) <= atol + rtol * abs(expected)


def compare(expected_rows: list[dict[str, Any]], actual_rows: list[dict[str, Any]],
            rtol: float, atol: float) -> list[Difference]:
    """Every golden number against the actual rows, plus rows the golden file lacks (``new``)."""
    actual = {tuple(row[k] for k in KEY): row for row in actual_rows}
    expected_keys = set()
    out = []
    for row in expected_rows:
        key = tuple(row[k] for k in KEY)
        expected_keys.add(key)
        found = actual.get(key)
        for metric in (m for m in METRICS if m in row):
            want = _number(row[metric])
            if found is None or metric not in found:
                out.append(Difference(key, metric, want, None, "missing"))
                continue
            got = _number(found[metric])
            status = "ok" if _close(want, got, rtol, atol) else "drift"
            out.append(Difference(key, metric, want, got, status))
    for key, row in actual.items():
        if key not in expected_keys:
            out += [Difference(key, m, None, _number(row[m]), "new") for m in METRICS if m in row]
    return out


def failed(differences: list[Difference]) -> bool:
    """True when a golden number drifted or is missing (``new`` rows are not failures)."""
    return any(d.status in ("drift", "missing") for d in differences)


def recompute(golden: dict[str, Any], out: Path | None = None, progress=None,
              data_root: Path | None = None) -> list[dict[str, Any]]:
    """Run the golden file's configuration (in a temporary folder unless ``out``)."""
    from ood_bench.runner import RunOptions, run_grid

    config = golden["config"]
    with tempfile.TemporaryDirectory(prefix="oodbench-check-") as scratch:
        options = RunOptions(
            out=Path(out or scratch), batch_size=config.get("batch_size", 8),
            seed=config.get("seed", 0), store_dtype=config.get("store_dtype", "float32"),
            limit=config.get("limit"), data_root=data_root,
            fit_dataset=config.get("fit_dataset"), fit_frames=config.get("fit_frames"),
            fit_options=config.get("fit_options") or {},
        )
        checkpoint = config.get("checkpoint")
        return run_grid(
            config["methods"], config["datasets"], options, model=config.get("model"),
            checkpoint=Path(checkpoint) if checkpoint else None,
            model_options=config.get("model_options"),
            method_options=config.get("method_options"), progress=progress,
        )


def updated_golden(golden: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``golden`` with its results replaced by ``rows`` (the recorded metrics only)."""
    results = [
        {**{k: row[k] for k in KEY},
         **{m: _number(row[m]) for m in METRICS if m in row}}
        for row in rows
    ]
    return {**golden, "format": FORMAT, "version": VERSION, "metric_spec": METRIC_SPEC_VERSION,
            "results": results}


def write_golden(path: str | Path, golden: dict[str, Any]) -> None:
    """Write a golden file atomically (NaN stored as ``null``)."""
    def plain(value):
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    with atomic_write(path, "w") as handle:
        json.dump(plain(golden), handle, indent=1, sort_keys=False)
        handle.write("\n")
