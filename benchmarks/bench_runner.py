"""Throughput of ``oodbench run`` versus the model's forward pass alone (synthetic benchmark).

Measures, on the first ``--frames`` frames of a synthetic dataset with the synthetic base
architecture (``deeplabv3plus-small``, width 16, 64×128 frames):

* forward      -- ``method.score`` on frames already decoded and normalised (model + score);
* read         -- reading (for synthetic data: rendering) the frames alone;
* read+forward -- the loop any evaluation needs: read each frame, normalise, score;
* pipeline     -- ``run_one``: read+forward plus the journal, the HDF5 commit, the metric pass
  from the store and the results row (a fresh output folder each repeat);
* eval         -- ``evaluate_store`` alone (the metric pass of a store read back from disk).

Storage + metrics cost is also timed directly inside the pipeline (store setup, turning the
method's output into stored frames and journalling them, the HDF5 commit, metric states, the
metric pass and the results files, by wrapping those functions), so the overhead figures do
not depend on subtracting two noisy totals: overhead = that time / the rest of the pipeline
(target < 10 %), and / the forward pass alone for reference. Each timing is the best of
``--repeats`` (the machine is shared; the minimum is the least disturbed run). Each part also
shows its main-thread CPU time, close to its wall time on an idle machine: on a loaded one,
compare those (the header prints the load average); with one thread (``OMP_NUM_THREADS=1``) the
overhead is also given as a ratio of main-thread CPU times, which a busy machine inflates less.

    python benchmarks/bench_runner.py [--frames 96] [--method msp] [--trained]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def best_of(repeats: int, function) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


class Stopwatch:
    """Wall and main-thread CPU time spent inside wrapped functions (nested calls counted once).

    The storage and metric work is single-threaded, so its CPU time is about what its wall time
    is on an idle machine; on a loaded one the wall time also holds waits for a core.
    """

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self._depth = 0

    def reset(self) -> None:
        self.wall = self.cpu = 0.0

    def wrap(self, owner, name: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            self._depth += 1
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.wall += time.perf_counter() - wall
                    self.cpu += time.thread_time() - cpu

        setattr(owner, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synth-acdc-poc")
    parser.add_argument("--method", default="msp")
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store-dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--trained", action="store_true",
                        help="use the trained synthetic base model (same cost, real scores)")
    args = parser.parse_args()

    import ood_bench.results as results
    import ood_bench.runner as runner
    from ood_bench.adapters import get_dataset
    from ood_bench.baselines import get_method
    from ood_bench.models import create_model, normalize_images
    from ood_bench.runner import LoadedModel, RunOptions, evaluate_store, run_one
    from ood_bench.store import ScoreStore

    if args.trained:
        from ood_bench.train import load_synthetic_base_model

        module = load_synthetic_base_model()
    else:
        torch.manual_seed(0)
        module = create_model("deeplabv3plus-small", width=16).eval()
    loaded = LoadedModel("deeplabv3plus-small", module, "benchmark", {"width": 16})
    dataset = get_dataset(args.dataset)
    method = get_method(args.method)
    n, batch = args.frames, args.batch_size
    starts = range(0, n, batch)
    images = [np.stack([dataset[i].image for i in range(s, min(s + batch, n))]) for s in starts]

    def forward() -> None:
        for block in images:
            method.score(module, normalize_images(block))

    def read() -> None:
        for i in range(n):
            dataset[i]

    def read_forward() -> None:
        for s in starts:
            block = np.stack([dataset[i].image for i in range(s, min(s + batch, n))])
            method.score(module, normalize_images(block))

    with tempfile.TemporaryDirectory() as scratch:
        runs = iter(range(10**6))
        options = lambda: RunOptions(out=Path(scratch) / str(next(runs)), limit=n,  # noqa: E731
                                     batch_size=batch, store_dtype=args.store_dtype)

        def pipeline() -> None:
            run_one(loaded, args.method, args.dataset, options())

        parts = {"store setup": [(ScoreStore, "prepare"), (ScoreStore, "finished_indices")],
                 "journal": [(ScoreStore, "write_frames"), (runner, "_stored_frames")],
                 "commit": [(ScoreStore, "commit")],
                 "metric states": [(runner.ChunkCollector, "add")],
                 "metric pass": [(runner, "compute_metrics")],
                 "results files": [(results, "append_result")]}  # run_one imports it late
        watches = {part: Stopwatch() for part in parts}
        for part, targets in parts.items():
            for owner, name in targets:
                watches[part].wrap(owner, name)

        load = os.getloadavg()[0]
        forward()  # warm-up
        t_forward = best_of(args.repeats, forward)
        t_read_only = best_of(args.repeats, read)
        t_read = best_of(args.repeats, read_forward)
        t_pipeline, split = float("inf"), {}
        for _ in range(args.repeats):  # keep the split of the fastest pipeline run
            for watch in watches.values():
                watch.reset()
            cpu = time.thread_time()
            seconds = best_of(1, pipeline)
            if seconds < t_pipeline:
                t_pipeline, cpu_pipeline = seconds, time.thread_time() - cpu
                split = {part: (watch.wall, watch.cpu) for part, watch in watches.items()}
        store = next(Path(scratch).glob("*/stores/*.h5"))
        t_eval = best_of(args.repeats, lambda: evaluate_store(store))
        store_mb = store.stat().st_size / 2**20

    times = {"forward": t_forward, "read": t_read_only, "read+forward": t_read,
             "pipeline": t_pipeline, "eval": t_eval}
    t_storage = sum(wall for wall, _ in split.values())
    cpu_storage = sum(cpu for _, cpu in split.values())
    print(f"{args.method} on {args.dataset}: {n} frames, batch {batch}, "
          f"{torch.get_num_threads()} threads, store {args.store_dtype} ({store_mb:.1f} MiB), "
          f"load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    for name, seconds in times.items():
        print(f"  {name:<13} {n / seconds:8.1f} frames/s  {1000 * seconds / n:7.2f} ms/frame")
    print(f"  pipeline / forward alone (fps ratio)        {t_forward / t_pipeline:.3f}")
    print(f"  pipeline / read+forward (fps ratio)         {t_read / t_pipeline:.3f}")
    print(f"  storage + metrics, timed inside pipeline    {1000 * t_storage / n:.2f} ms/frame "
          f"(main-thread CPU {1000 * cpu_storage / n:.2f})")
    for part, (wall, cpu) in split.items():
        print(f"    {part:<16} {1000 * wall / n:6.2f} ms/frame  (CPU {1000 * cpu / n:.2f})")
    rest = t_pipeline - t_storage
    print(f"  overhead vs rest of pipeline (< 10 %)       {100 * t_storage / rest:.1f} %")
    if torch.get_num_threads() == 1:  # else the rest also runs on threads thread_time misses
        print(f"    the same in main-thread CPU time          "
              f"{100 * cpu_storage / (cpu_pipeline - cpu_storage):.1f} %")
    print(f"  overhead vs forward alone                   {100 * t_storage / t_forward:.1f} %")

if __name__ == "__main__":
    main()
