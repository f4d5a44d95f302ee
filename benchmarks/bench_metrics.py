"""Speed, memory and accuracy of the pixel OOD metrics versus scikit-learn.

For each pool size (default 1e7 and 5e7 pixels, 2 % positives, continuous float32 scores with
the positives shifted up) this prints wall time and peak memory of

* ``sklearn``: ``roc_auc_score`` + ``average_precision_score`` + ``roc_curve`` (for FPR@95),
* ``exact``: ``pixel_ood_metrics(..., exact=True)``,
* ``streaming``: ``PixelOODMetric()`` updated with ``--chunk``-pixel frames, then ``compute()``,
* ``floor``: one read pass, ``scores.sum()``,

with each mode's speed-up over scikit-learn and its slowdown over the floor, and the CPU time
(on a loaded machine its ratios move less than the wall-clock ones). Imports happen before the
clock starts, for every mode. Every mode runs in a fresh subprocess that loads the arrays from
``.npy`` files, so its peak RSS (``ru_maxrss``) minus the RSS after loading is the memory the
mode itself needed; a second, traced run gives the peak of Python/numpy allocations
(``tracemalloc``). It then prints the streaming mode's
certified error bounds next to its actual errors versus exact mode, for these pools and for
``--bound-size`` pixels of Gaussian and energy-like (-25 +- 3) scores.

Targets: exact >= 20x faster than scikit-learn with equal results; streaming >= 100x faster
with peak memory independent of N; bounds <= 1e-5 for AUROC and AP at 1e8 pixels.

    python benchmarks/bench_metrics.py                        # full run (minutes: sklearn)
    python benchmarks/bench_metrics.py --sizes 1e6 --bound-size 1e6 --skip-sklearn   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

METRICS = ("auroc", "ap", "fpr95")


def make_pool(n: int, kind: str, folder: Path) -> Path:
    """Write labels (uint8, 2 % OOD) and float32 scores of ``kind`` to ``folder``."""
    rng = np.random.default_rng(0)
    labels = (rng.random(n, dtype=np.float32) < 0.02).astype(np.uint8)
    scores = rng.standard_normal(n, dtype=np.float32)
    if kind == "energy":  # negative free energies: ID around -25, OOD higher
        scores *= 3
        scores -= 25
        scores += 4 * labels
    else:
        scores += 2 * labels
    stem = folder / f"{kind}_{n}"
    np.save(f"{stem}_scores.npy", scores)
    np.save(f"{stem}_labels.npy", labels)
    return stem


def _rss_mib() -> float:
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def run_mode(mode: str, scores: np.ndarray, labels: np.ndarray, chunk: int) -> dict:
    """One evaluation; returns the three metrics (and bounds for streaming)."""
    if mode == "floor":
        scores.sum()
        return {}
    if mode == "sklearn":
        from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

        auroc = roc_auc_score(labels, scores)
        ap = average_precision_score(labels, scores)
        fpr, tpr, _ = roc_curve(labels, scores)
        return {"auroc": auroc, "ap": ap, "fpr95": float(fpr[np.argmax(tpr >= 0.95)])}
    from ood_bench.metrics.pixel import PixelOODMetric, pixel_ood_metrics

    if mode == "exact":
        return pixel_ood_metrics(scores, labels)
    metric = PixelOODMetric()
    for start in range(0, scores.size, chunk):
        metric.update(scores[start:start + chunk], labels[start:start + chunk])
    return {**metric.compute(), "state_mib": metric.state_bytes / 2**20}


def import_mode(mode: str) -> None:
    """Import what ``mode`` needs before the clock starts: a one-off cost of the process,
    not of the metric (``ood_bench.metrics`` pulls in scipy.ndimage: ~0.2 s)."""
    if mode == "sklearn":
        import sklearn.metrics  # noqa: F401
    elif mode != "floor":
        import ood_bench.metrics.pixel  # noqa: F401


def worker(mode: str, stem: str, chunk: int, traced: bool) -> None:
    """Subprocess body: load, time one run, then (optionally) trace a second one."""
    scores = np.load(f"{stem}_scores.npy")
    labels = np.load(f"{stem}_labels.npy")
    import_mode(mode)
    baseline = _rss_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = run_mode(mode, scores, labels, chunk)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline
    traced_peak = None
    if traced:
        tracemalloc.start()
        run_mode(mode, scores, labels, chunk)
        traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    print(json.dumps({"mode": mode, "seconds": seconds, "cpu": cpu,
                      "peak_rss_mib": max(peak, 0.0),
                      "traced_mib": traced_peak, "result": result}, default=float))


def in_subprocess(mode: str, stem: Path, chunk: int, traced: bool = True) -> dict:
    command = [sys.executable, __file__, "--worker", mode, str(stem), "--chunk", str(chunk)]
    if traced:
        command.append("--traced")
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def fmt_mib(value: float | None) -> str:
    return "-" if value is None else f"{value:8.1f}"


def print_speed_table(n: int, runs: dict[str, dict]) -> None:
    sk = runs.get("sklearn")
    floor = runs["floor"]["seconds"]
    print(f"\n## N = {n:.0e} pixels (2 % OOD, float32 N(0,1), OOD +2)")
    print("| mode | time (s) | speed-up vs sklearn | x floor | CPU time (s) | CPU speed-up "
          "| peak RSS (MiB) | peak numpy (MiB) | AUROC | AP | FPR@95 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, run in runs.items():
        speedup = f"{sk['seconds'] / run['seconds']:.1f}x" if sk else "-"
        cpu_speedup = f"{sk['cpu'] / run['cpu']:.1f}x" if sk and run["cpu"] > 0 else "-"
        values = " | ".join(f"{run['result'][m]:.9f}" if m in run["result"] else "-"
                            for m in METRICS)
        print(f"| {mode} | {run['seconds']:.3f} | {speedup} | {run['seconds'] / floor:.0f} | "
              f"{run['cpu']:.3f} | {cpu_speedup} | {fmt_mib(run['peak_rss_mib'])} | "
              f"{fmt_mib(run['traced_mib'])} | {values} |")
    exact = runs["exact"]["result"]
    if sk:
        diff = max(abs(exact[m] - sk["result"][m]) for m in METRICS)
        print(f"max |exact - sklearn| = {diff:.2e}")


def print_bounds(label: str, exact: dict, streaming: dict) -> None:
    parts = []
    for name in METRICS:
        error = abs(streaming[name] - exact[name])
        bound = streaming["error_bound"][name]
        parts.append(f"{name}: |err| {error:.2e} <= bound {bound:.2e}"
                     f"{'' if error <= bound else '  VIOLATED'}")
    print(f"| {label} | " + " | ".join(parts) + f" | {streaming['state_mib']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e7, 5e7])
    parser.add_argument("--bound-size", type=float, default=1e8)
    parser.add_argument("--chunk", type=int, default=10**6)
    parser.add_argument("--skip-sklearn", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "STEM"), help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.chunk, args.traced)
        return
    print(f"bench_metrics: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} "
          f"at start, streaming chunk {args.chunk} pixels")
    bounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(size) for size in args.sizes):
            stem = make_pool(n, "gauss", Path(tmp))
            runs = {"floor": in_subprocess("floor", stem, args.chunk, traced=False)}
            if not args.skip_sklearn:
                runs["sklearn"] = in_subprocess("sklearn", stem, args.chunk, traced=False)
            runs["exact"] = in_subprocess("exact", stem, args.chunk)
            runs["streaming"] = in_subprocess("streaming", stem, args.chunk)
            print_speed_table(n, runs)
            bounds.append((f"gauss {n:.0e}", runs["exact"]["result"],
                           runs["streaming"]["result"]))
            for path in Path(tmp).iterdir():
                path.unlink()
        n = int(args.bound_size)
        for kind in ("gauss", "energy"):
            stem = make_pool(n, kind, Path(tmp))
            exact = in_subprocess("exact", stem, args.chunk, traced=False)["result"]
            streaming = in_subprocess("streaming", stem, args.chunk, traced=False)["result"]
            bounds.append((f"{kind} {n:.0e}", exact, streaming))
            for path in Path(tmp).iterdir():
                path.unlink()
    print("\n## streaming: certified bound vs actual error (vs exact mode, same pixels)")
    print("| pool | AUROC | AP | FPR@95 | state (MiB) |")
    print("|---|---|---|---|---|")
    for label, exact, streaming in bounds:
        print_bounds(label, exact, streaming)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
