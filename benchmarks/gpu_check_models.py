"""CUDA check of ``deeplabv3plus-wrn38`` at 1024×2048: forward time in fp32 and bf16 autocast,
and how far bf16 logits are from fp32 (relative L2 error, max abs error, argmax agreement).

Runs through :func:`ood_bench.models.inference.infer` (whole-image mode, batch 1). The fp32
reference has TF32 disabled (true fp32); "fp32+tf32" is timed as well. Without ``--checkpoint``
the weights are random and the BatchNorm statistics are first calibrated on a few random images
(cumulative averages in train mode), so activations have trained-network magnitudes rather than
growing through 38 un-normalised layers. Exits with status 2 and a message when CUDA is absent.

    python benchmarks/gpu_check_models.py [--checkpoint DeepLabV3+_WideResNet38_baseline.pth]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from ood_bench.models import create_model
from ood_bench.models.checkpoint import load_checkpoint
from ood_bench.models.inference import infer


def smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A normalised 1×3×H×W image with natural-image-like low-frequency structure."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 3, height // 32, width // 32, generator=gen)
    fine = torch.randn(1, 3, height, width, generator=gen) * 0.1
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False) + fine


@torch.no_grad()
def calibrate_bn(
    model: torch.nn.Module, device: torch.device, steps: int = 4, batch_size: int = 4
) -> None:
    """Replace BatchNorm running statistics by their cumulative average over random images."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for step in range(steps):
        # distinct images per batch: the image-pooling BN sees one value per image
        batch = [smooth_image(256, 512, seed=1 + step * batch_size + i) for i in range(batch_size)]
        model(torch.cat(batch).to(device), taps=())
    for m in bns:
        m.momentum = 0.1
    model.eval()


def time_forward(model, x, amp, repeats: int) -> tuple[float, torch.Tensor]:
    """Median milliseconds of ``repeats`` timed passes after two warm-ups; and the logits."""
    for _ in range(2):
        out = infer(model, x, amp=amp, features=False)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = infer(model, x, amp=amp, features=False)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2], out.logits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a DeepWV3Plus checkpoint (default: random weights)")
    parser.add_argument("--size", default="1024x2048")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "gpu_check_models: CUDA is not available on this machine; nothing to check.",
            file=sys.stderr,
        )
        return 2
    height, width = (int(v) for v in args.size.split("x"))
    device = torch.device("cuda")
    model = create_model("deeplabv3plus-wrn38").to(device)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
        source = args.checkpoint
    else:
        torch.manual_seed(0)
        calibrate_bn(model, device)
        source = "random weights, calibrated BN"
    model.eval()
    x = smooth_image(height, width).to(device)
    print(
        f"{torch.cuda.get_device_name()} | torch {torch.__version__} | {source} | "
        f"input 1x3x{height}x{width}"
    )

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    ms32, ref = time_forward(model, x, None, args.repeats)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    ms_tf32, _ = time_forward(model, x, None, args.repeats)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    ms16, low = time_forward(model, x, "bf16", args.repeats)

    rel = ((low - ref).norm() / ref.norm()).item()
    max_abs = (low - ref).abs().max().item()
    agree = (low.argmax(1) == ref.argmax(1)).float().mean().item()
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"fp32 (TF32 off): {ms32:8.1f} ms/img  ({1000 / ms32:.2f} img/s)")
    print(f"fp32 + TF32:     {ms_tf32:8.1f} ms/img  ({1000 / ms_tf32:.2f} img/s)")
    print(
        f"bf16 autocast:   {ms16:8.1f} ms/img  ({1000 / ms16:.2f} img/s), "
        f"speed-up x{ms32 / ms16:.2f} over fp32"
    )
    print(
        f"bf16 vs fp32 logits: relative L2 error {rel:.2e}, max abs error {max_abs:.3g}, "
        f"argmax agreement {100 * agree:.3f} %"
    )
    print(f"peak GPU memory {peak:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
