"""CUDA check of the CG-Aug generator: ``ControlNetGenerator`` with random full-size weights
(SD 1.5 UNet/VAE/text encoder + segmentation ControlNet, fp16) at 512×1024, DDIM 50 steps,
guidance 9.0, on a 1024×2048 Cityscapes-like label map with a pasted object; then the SAM ViT-H
box-prompted mask of the filter. Prints the one-off load time, seconds per image (first sample
separately: CUDA warm-up) and peak GPU memory. Exits with status 2 and a message without CUDA.

The weights are saved to a temporary folder and loaded offline through the same code path
users run (``ood_bench.cgaug.testing``), so the timing includes nothing a real run skips.

Not yet covered: a few training steps of the WRN38 two-stage recipe — that part of this
check arrives with CG-Aug's training (issue 8, section 2).

    python benchmarks/gpu_check_cgaug.py [--samples 3] [--steps 50]
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
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check_cgaug: CUDA is not available; this check needs an NVIDIA GPU.",
              file=sys.stderr)
        return 2
    frame = get_dataset("synth-cityscapes", height=1024, width=2048, length=1)[0]
    rng = np.random.default_rng(0)
    pasted = paste_on_road(frame.semantic, SyntheticObjects().draw(rng), rng)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        sd, controlnet = save_random_controlnet_pipeline(folder, "full")
        sam_path = save_random_sam(folder, "full")
        print(f"random full-size weights saved in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        generator = ControlNetGenerator(controlnet, sd, steps=args.steps, device="cuda")
        masker = SamMasker(sam_path, device="cuda")
        torch.cuda.synchronize()
        print(f"offline load (fp16 ControlNet pipeline + SAM ViT-H): "
              f"{time.perf_counter() - start:.1f} s")
        torch.cuda.reset_peak_memory_stats()
        times, sam_times = [], []
        for sample in range(args.samples):
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
    print(f"ControlNetGenerator 512x1024, {args.steps} DDIM steps, guidance 9.0: "
          f"first {times[0]:.2f} s, then {np.mean(steady):.2f} s/image; "
          f"SAM ViT-H {np.mean(sam_times[1:] or sam_times):.3f} s/image; "
          f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB "
          f"({torch.cuda.get_device_name()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
