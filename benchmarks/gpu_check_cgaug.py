"""CUDA check of the CG-Aug generator: ``ControlNetGenerator`` with random full-size weights
(SD 1.5 UNet/VAE/text encoder + segmentation ControlNet, fp16) at 512×1024, DDIM 50 steps,
guidance 9.0, on a 1024×2048 Cityscapes-like label map with a pasted object; then the SAM ViT-H
box-prompted mask of the filter. Prints the one-off load time, seconds per image (first sample
separately: CUDA warm-up) and peak GPU memory. Exits with status 2 and a message without CUDA.

The weights are saved to a temporary folder and loaded offline through the same code path
users run (``ood_bench.cgaug.testing``), so the timing includes nothing a real run skips.

Then a few steps of each stage of CG-Aug's two-stage training with the paper's DeepLab recipe
(``cgaug.training.REAL``: 8 originals + 8 generated partners per step, 700×700 crops, COCO-style
outlier paste, mixup) on a random-weight ``deeplabv3plus-wrn38``, with pairs generated at
1024×2048 by the synthetic generator; prints seconds per step and peak GPU memory per stage.
The frames and a pool of outlier objects are decoded before the steps, so the steps time
training rather than rendering the synthetic world.

    python benchmarks/gpu_check_cgaug.py [--samples 3] [--steps 50] [--train-steps 3]
                                         [--batch 8] [--skip-generation]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import torch

from ood_bench.adapters import get_dataset
from ood_bench.cgaug.filtering import SamMasker, box_of, mask_iou
from ood_bench.cgaug.generators import ControlNetGenerator
from ood_bench.cgaug.paste import paste_on_road
from ood_bench.cgaug.sources import SyntheticObjects
from ood_bench.cgaug.testing import save_random_controlnet_pipeline, save_random_sam


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--train-steps", type=int, default=3, help="steps per training stage")
    parser.add_argument("--batch", type=int, default=8, help="originals per training step")
    parser.add_argument("--skip-generation", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check_cgaug: CUDA is not available; this check needs an NVIDIA GPU.",
              file=sys.stderr)
        return 2
    if not args.skip_generation:
        check_generation(args.samples, args.steps)
    check_training(args.train_steps, args.batch)
    return 0


def check_generation(samples: int, steps: int) -> None:
    """ControlNet + SAM with random full-size weights at 512×1024."""
    frame = get_dataset("synth-cityscapes", height=1024, width=2048, length=1)[0]
    rng = np.random.default_rng(0)
    pasted = paste_on_road(frame.semantic, SyntheticObjects().draw(rng), rng)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        sd, controlnet = save_random_controlnet_pipeline(folder, "full")
        sam_path = save_random_sam(folder, "full")
        print(f"random full-size weights saved in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        generator = ControlNetGenerator(controlnet, sd, steps=steps, device="cuda")
        masker = SamMasker(sam_path, device="cuda")
        torch.cuda.synchronize()
        print(f"offline load (fp16 ControlNet pipeline + SAM ViT-H): "
              f"{time.perf_counter() - start:.1f} s")
        torch.cuda.reset_peak_memory_stats()
        times, sam_times = [], []
        for sample in range(samples):
            torch.cuda.synchronize()
            start = time.perf_counter()
            image = generator.generate(pasted, seed=sample).image
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            start = time.perf_counter()
            mask = masker(image, box_of(pasted.mask))
            torch.cuda.synchronize()
            sam_times.append(time.perf_counter() - start)
            print(f"sample {sample}: generate {times[-1]:.2f} s, SAM {sam_times[-1]:.2f} s, "
                  f"image {image.shape}, IoU(random SAM, pasted) {mask_iou(mask, pasted.mask):.2f}")
    steady = times[1:] or times
    print(f"ControlNetGenerator 512x1024, {steps} DDIM steps, guidance 9.0: "
          f"first {times[0]:.2f} s, then {np.mean(steady):.2f} s/image; "
          f"SAM ViT-H {np.mean(sam_times[1:] or sam_times):.3f} s/image; "
          f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB "
          f"({torch.cuda.get_device_name()})")


def check_training(steps: int, batch: int, *, model_name: str = "deeplabv3plus-wrn38",
                   size: tuple[int, int] = (1024, 2048), device: str = "cuda") -> None:
    """A few steps of both stages of the paper's WRN38 recipe (fp32, like the paper)."""
    import os
    from dataclasses import replace

    from ood_bench.baselines.outlier_exposure import synthetic_outliers
    from ood_bench.cgaug.generators import SyntheticGenerator
    from ood_bench.cgaug.pairs import GeneratedTree, PairedFrames
    from ood_bench.cgaug.pipeline import generate_dataset
    from ood_bench.cgaug.training import REAL, train_two_stages
    from ood_bench.models import create_model

    cuda = device.startswith("cuda")
    frames = 2
    source = get_dataset("synth-cityscapes", height=size[0], width=size[1], length=frames)
    with tempfile.TemporaryDirectory() as folder:
        os.environ["OODBENCH_CACHE"] = folder  # the stages' checkpoints go to the scratch folder
        start = time.perf_counter()
        generate_dataset(source, SyntheticGenerator(), SyntheticObjects(), f"{folder}/gen",
                         limit=frames)
        # decoded once: the steps then time training, not rendering the synthetic world
        tree = GeneratedTree(f"{folder}/gen")
        pairs = PairedFrames([source[i] for i in range(frames)],
                             [tree[i] for i in range(len(tree))])
        # a pre-rendered pool, as COCO objects are small files: rendering a synthetic outlier
        # scene per draw (1.7 s on one CPU thread at 1024x2048) would dominate each step
        rendered = synthetic_outliers(*size)
        outliers = [rendered[i] for i in range(4)]
        print(f"{frames} pairs generated at {size[0]}x{size[1]} in "
              f"{time.perf_counter() - start:.1f} s")
        model = create_model(model_name).to(device).eval()
        recipe = replace(REAL, stage1_steps=steps, stage2_steps=steps, batch_size=batch)
        times = [time.perf_counter()]

        def tick(_: int) -> None:
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            if cuda and len(times) - 1 in (steps, 2 * steps):
                stage = 1 if len(times) - 1 == steps else 2
                print(f"stage {stage}: peak GPU memory "
                      f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
                torch.cuda.reset_peak_memory_stats()

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        train_two_stages(model, pairs, outliers, recipe, {"gpu_check": True}, device=device,
                         on_step=tick)
    step_times = np.diff(times)
    name = torch.cuda.get_device_name() if cuda else device
    for stage, part in ((1, step_times[:steps]), (2, step_times[steps:])):
        steady = part[1:] if len(part) > 1 else part
        print(f"{model_name} CG-Aug stage {stage}, {batch}+{batch} images of "
              f"{recipe.crop[0]}x{recipe.crop[1]} per step: first {part[0]:.2f} s, then "
              f"{np.mean(steady):.2f} s/step ({name})")


if __name__ == "__main__":
    sys.exit(main())
