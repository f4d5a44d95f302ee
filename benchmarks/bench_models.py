"""Forward throughput (images/s, batch 1, ``torch.inference_mode``) of every registered model on
this CPU, at 512×1024 and at the synthetic-benchmark resolution 96×192, plus the training
throughput of ``deeplabv3plus-small`` at 96×192 (batch 8, SGD step).

Each measurement does one warm-up pass, then repeats until ``--min-seconds`` have passed (at least
one timed pass, at most ``--max-iters``), so slow models (WRN-38 at 512×1024) cost only two passes.

    python benchmarks/bench_models.py            # all models, ~5 minutes on 2 cores
    python benchmarks/bench_models.py --models deeplabv3plus-small --sizes 96x192
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ood_bench.models import create_model, list_models


def _timed(step, min_seconds: float, max_iters: int) -> float:
    """Seconds per call of ``step`` after one warm-up call."""
    step()
    iters, start = 0, time.perf_counter()
    while True:
        step()
        iters += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or iters >= max_iters:
            return elapsed / iters


def forward_throughput(model, size: tuple[int, int], min_seconds: float, max_iters: int) -> float:
    x = torch.randn(1, 3, *size)

    def step():
        with torch.inference_mode():
            model(x, taps=())

    return 1.0 / _timed(step, min_seconds, max_iters)


def train_throughput(model, size: tuple[int, int], batch: int, min_seconds: float) -> float:
    x = torch.randn(batch, 3, *size)
    y = torch.randint(0, model.num_classes, (batch, *size))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()

    def step():
        loss = F.cross_entropy(model(x, taps=()).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return batch / _timed(step, min_seconds, max_iters=50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list_models())
    parser.add_argument("--sizes", nargs="*", default=["96x192", "512x1024"])
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--max-iters", type=int, default=20)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, float32")
    print(f"{'model':<22} {'params':>10} {'size':>9} {'img/s':>9} {'ms/img':>9}")
    for name in args.models:
        model = create_model(name).eval()
        params = sum(p.numel() for p in model.parameters())
        for size in sizes:
            ips = forward_throughput(model, size, args.min_seconds, args.max_iters)
            print(
                f"{name:<22} {params:>10,} {'x'.join(map(str, size)):>9} {ips:>9.2f} "
                f"{1000 / ips:>9.1f}",
                flush=True,
            )
    if "deeplabv3plus-small" in args.models:
        ips = train_throughput(create_model("deeplabv3plus-small"), (96, 192), 8, args.min_seconds)
        print(f"deeplabv3plus-small training (batch 8, 96x192, SGD step): {ips:.1f} img/s")


if __name__ == "__main__":
    main()
