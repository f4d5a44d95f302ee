"""Mask2Former timings: ``mask2former-tiny`` training on this CPU, then on CUDA the ResNet-50
Mask2Former forward at 1024×2048 (fp32 and bf16 autocast) and a few CG-Aug stage-2-style steps.

* CPU (always): ``mask2former-tiny``, batch 8 at 64×128, forward + backward + AdamW step with
  the Mask2Former set criterion (``ood_bench.models.mask2former_loss.SetCriterion``), and the
  inference forward alone — median milliseconds.
* CUDA forward: ``mask2former-r50-gma`` (random weights), batch 1 at ``--size``, semantic
  scores only (``taps=()``); fp32 with TF32 off, and bf16 autocast; relative L2 error of the
  bf16 scores and argmax agreement against fp32; peak memory.
* CUDA CG-Aug stage 2 (MultiShiftSeg ``M2F.yaml``): ``mask2former-r50-gma`` with the OOD head,
  *every* parameter trainable, AdamW lr 1e-5 (backbone ×0.1), weight decay 0.05 (0 on norms and
  embeddings), full-model gradient clipping 0.01, bf16 autocast; loss = ``SetCriterion`` with
  class 5 / mask 10 / dice 10, no deep supervision, low-loss point selection on the generated
  half of the batch (the relative contrastive OOD term belongs to the ``cgaug`` method and is not
  included). ``--batch`` images (half "generated") at ``--crop``; median ms/step, peak memory.

Exits with status 2 and a message when CUDA is absent (after the CPU figure).

    python benchmarks/gpu_check_mask2former.py [--size 1024x2048] [--crop 700x700] [--batch 4]
    python benchmarks/gpu_check_mask2former.py --device cpu --size 128x256 --crop 128x128  # dry run
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from ood_bench.models import create_model
from ood_bench.models.mask2former_loss import SetCriterion


def synthetic_batch(batch: int, height: int, width: int, seed: int = 0):
    """Normalised smooth images and trainId label maps of vertical class bands + a void strip."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 3, max(height // 32, 1), max(width // 32, 1), generator=gen)
    images = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    columns = torch.arange(width) * 19 // width
    shift = torch.randint(0, 19, (batch, 1, 1), generator=gen)
    labels = ((columns[None, None, :] + shift) % 19).expand(batch, height, width).clone()
    labels[:, : height // 10] = 255
    return images, labels


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(step, device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]


def stage2_optimizer(model: torch.nn.Module, lr: float = 1e-5) -> torch.optim.Optimizer:
    """AdamW as detectron2 builds it for Mask2Former: backbone lr ×0.1, no decay on norms and
    embeddings, weight decay 0.05 elsewhere."""
    groups = []
    backbone = {id(p) for p in model.param_groups()["backbone"]}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            no_decay = isinstance(
                module,
                torch.nn.Embedding | torch.nn.LayerNorm | torch.nn.GroupNorm | torch.nn.BatchNorm2d,
            )
            groups.append(
                {
                    "params": [param],
                    "lr": lr * (0.1 if id(param) in backbone else 1.0),
                    "weight_decay": 0.0 if no_decay else 0.05,
                }
            )
    return torch.optim.AdamW(groups, lr=lr)


def training_step(model, optimizer, criterion, images, labels, selection, amp, clip=None):
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(
            images, taps=["class_logits", "mask_logits", "aux_class_logits", "aux_mask_logits"]
        )
    loss, _ = criterion(out, labels, point_selection=selection)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.detach()


def cpu_tiny(repeats: int) -> None:
    torch.manual_seed(0)
    model = create_model("mask2former-tiny").train()
    images, labels = synthetic_batch(8, 64, 128)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = SetCriterion(num_points=64 * 128 // 4)
    cpu = torch.device("cpu")
    train = median_ms(
        lambda: training_step(model, optimizer, criterion, images, labels, None, amp=False),
        cpu,
        repeats,
    )
    model.eval()

    def forward():
        with torch.inference_mode():
            model(images, taps=())

    infer = median_ms(forward, cpu, repeats)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"CPU ({torch.get_num_threads()} threads) mask2former-tiny ({params / 1e6:.2f} M params),"
        f" batch 8 at 64x128: train step (fwd+bwd+AdamW, SetCriterion) {train:.0f} ms, "
        f"inference forward {infer:.0f} ms"
    )


def device_forward(device, height, width, repeats) -> None:
    torch.manual_seed(0)
    model = create_model("mask2former-r50-gma").to(device).eval()
    x, _ = synthetic_batch(1, height, width)
    x = x.to(device)
    results = {}
    for label, amp in (("fp32 (TF32 off)", False), ("bf16 autocast", True)):

        def forward(amp=amp, label=label):
            with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=amp):
                results[label] = model(x, taps=()).logits

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ms = median_ms(forward, device, repeats)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        print(
            f"mask2former-r50-gma forward 1x3x{height}x{width} {label:16s}: {ms:8.1f} ms/img "
            f"({1000 / ms:.2f} img/s), peak memory {peak:.1f} GiB"
        )
    ref, low = results["fp32 (TF32 off)"], results["bf16 autocast"]
    ref, low = ref.float(), low.float()
    rel = ((low - ref).norm() / ref.norm()).item()
    max_abs = (low - ref).abs().max().item()
    same = low.argmax(1) == ref.argmax(1)
    # random weights give near-ties between classes; count agreement also where fp32 decides
    top2 = ref.topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]) > 2 * max_abs
    decided_share = decided.float().mean().item()
    decided_agree = same[decided].float().mean().item() if decided.any() else float("nan")
    print(
        f"bf16 vs fp32 semantic scores: relative L2 error {rel:.2e}, max abs error "
        f"{max_abs:.3g}, argmax agreement {100 * same.float().mean().item():.3f} % of all "
        f"pixels, {100 * decided_agree:.3f} % of the {100 * decided_share:.1f} % whose fp32 "
        f"top-2 margin exceeds twice the max abs error"
    )


def device_stage2(device, height, width, batch, steps) -> None:
    torch.manual_seed(0)
    model = create_model("mask2former-r50-gma", ood_head=True).to(device).train()
    for param in model.parameters():
        param.requires_grad_(True)
    optimizer = stage2_optimizer(model)
    criterion = SetCriterion(
        class_weight=5.0, mask_weight=10.0, dice_weight=10.0, deep_supervision=False
    )
    images, labels = synthetic_batch(batch, height, width, seed=1)
    images, labels = images.to(device), labels.to(device)
    selection = torch.arange(batch) >= batch // 2  # second half = generated images
    losses = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ms = median_ms(
        lambda: losses.append(
            training_step(
                model, optimizer, criterion, images, labels, selection, amp=True, clip=0.01
            )
        ),
        device,
        steps,
    )
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(
        f"CG-Aug stage-2 step, mask2former-r50-gma + OOD head ({trainable / 1e6:.1f} M trainable),"
        f" batch {batch} at {height}x{width}, bf16 autocast, SetCriterion(5/10/10): "
        f"{ms:.0f} ms/step, peak memory {peak:.1f} GiB; losses "
        f"{' '.join(f'{v.item():.2f}' for v in losses)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    parser.add_argument("--size", default="1024x2048", help="forward input size")
    parser.add_argument("--crop", default="700x700", help="stage-2 training crop")
    parser.add_argument("--batch", type=int, default=4, help="stage-2 batch (half generated)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed stage-2 steps")
    args = parser.parse_args()
    print(f"torch {torch.__version__}")
    cpu_tiny(args.repeats)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check_mask2former: CUDA is not available on this machine; the GPU checks "
            "did not run.",
            file=sys.stderr,
        )
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        print(torch.cuda.get_device_name())
    height, width = (int(v) for v in args.size.split("x"))
    device_forward(device, height, width, args.repeats)
    crop_h, crop_w = (int(v) for v in args.crop.split("x"))
    device_stage2(device, crop_h, crop_w, args.batch, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
