"""Scoring time of every registered OOD method relative to a plain forward pass of the model.

For each image size, ``method.score(model, x)`` and ``model(x)`` (``torch.inference_mode``,
batch 1) are timed alternately, ``--repeats`` times each after one warm-up, and the ratio of the
fastest runs is printed. Times are CPU time of this process (``time.process_time``), which
other jobs on a shared machine disturb far less than wall time; run with ``OMP_NUM_THREADS=1``
for the steadiest numbers.
Targets: post-hoc scores (msp, maxlogit, entropy, energy) ≤ 1.1× a forward pass; ODIN (one
forward + backward to the input + a second forward) and Mahalanobis are reported. Mahalanobis
is first fitted on two random frames of the same size (fit time printed; the statistics go to
a temporary cache folder, never to the user's).

``--memory HxW`` also prints the peak resident memory (CPU) of one forward pass and of one
``score`` call per method at that size, each measured in a fresh subprocess.

    python benchmarks/bench_methods.py                                  # ~2 minutes on 2 cores
    python benchmarks/bench_methods.py --sizes 96x192 --methods msp,odin
    python benchmarks/bench_methods.py --sizes 512x1024 --memory 1024x2048
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from ood_bench.adapters.base import Sample
from ood_bench.baselines import get_method, list_methods
from ood_bench.models import create_model

MODEL = "deeplabv3plus-small"


def parse_size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def random_frames(count: int, size: tuple[int, int]) -> list[Sample]:
    rng = np.random.default_rng(0)
    return [
        Sample(
            rng.integers(0, 256, (*size, 3), dtype=np.uint8),
            None,
            rng.integers(0, 19, size, dtype=np.uint8),
            f"frame{i}",
        )
        for i in range(count)
    ]


def build(name: str, model, size: tuple[int, int]):
    """The method, fitted if it needs it; returns (method, fit seconds or None)."""
    method = get_method(name)
    if not method.requires_fit:
        return method, None
    start = time.perf_counter()
    method.fit(model, random_frames(2, size))
    return method, time.perf_counter() - start


def seconds(step) -> float:
    """CPU seconds (all threads of this process) spent in ``step()``."""
    start = time.process_time()
    step()
    return time.process_time() - start


def compare(model, method, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Fastest CPU seconds of a plain forward pass and of ``method.score``, timed alternately."""

    def forward():
        with torch.inference_mode():
            model(x)

    def score():
        method.score(model, x)

    forward(), score()  # warm-up
    plain, scored = [], []
    for _ in range(repeats):
        plain.append(seconds(forward))
        scored.append(seconds(score))
    return min(plain), min(scored)


def peak_memory_mib(name: str, size: tuple[int, int]) -> float:
    """Peak RSS (MiB) of a fresh process that builds the model and runs ``name`` once."""
    command = [sys.executable, __file__, "--peak-of", name, "--sizes", "x".join(map(str, size))]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return float(result.stdout.strip().splitlines()[-1])


def run_once(name: str, size: tuple[int, int]) -> None:
    """Subprocess body of :func:`peak_memory_mib`: prints this process's peak RSS in MiB."""
    model = create_model(MODEL, num_classes=19).eval()
    x = torch.randn(1, 3, *size)
    if name == "forward":
        with torch.inference_mode():
            model(x)
    else:
        method, _ = build(name, model, size)
        method.score(model, x)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="96x192,512x1024", help="comma-separated HxW")
    parser.add_argument("--methods", default=",".join(list_methods()))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory", metavar="HxW", help="also measure peak memory at this size")
    parser.add_argument("--peak-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    os.environ["OODBENCH_CACHE"] = tempfile.mkdtemp(prefix="oodbench-bench-")
    if args.peak_of:
        run_once(args.peak_of, sizes[0])
        return
    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=19).eval()
    names = args.methods.split(",")
    print(f"{MODEL}, batch 1, {torch.get_num_threads()} threads, repeats={args.repeats}")
    print("CPU ms per image (process time; fastest of the repeats)")
    print(f"{'method':<12} {'size':>9} {'forward ms':>11} {'score ms':>10} {'ratio':>6}  notes")
    for size in sizes:
        x = torch.randn(1, 3, *size)
        for name in names:
            method, fit_seconds = build(name, model, size)
            plain, scored = compare(model, method, x, args.repeats)
            note = f"fit on 2 frames: {fit_seconds:.2f} s wall" if fit_seconds is not None else ""
            print(f"{name:<12} {'x'.join(map(str, size)):>9} {plain * 1e3:>11.1f} "
                  f"{scored * 1e3:>10.1f} {scored / plain:>6.2f}  {note}")
    if args.memory:
        size = parse_size(args.memory)
        print(f"\npeak resident memory at {args.memory}, batch 1 (fresh process each):")
        for name in ["forward", *names]:
            print(f"{name:<12} {peak_memory_mib(name, size):>8.0f} MiB")


if __name__ == "__main__":
    main()
