"""Synthetic benchmark: frame generation speed, and the base model's quality on every dataset.

    python benchmarks/bench_synthetic.py                 # frames/s per dataset on one core
    python benchmarks/bench_synthetic.py --quality       # + mIoU and energy-score OOD metrics

Speed target: >= 100 frames/s per dataset at the default resolution on one core (the ratio
printed is frames/s / 100). Quality (the issue's acceptance): base-model mIoU >= 70 % on
synth-cityscapes-val with a clear drop on synth-acdc-poc, and the energy score's FPR@95 on
synth-acdc-poc clearly worse than on synth-roadanomaly.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ood_bench.adapters import get_dataset  # noqa: E402

DATASETS = ("synth-cityscapes", "synth-roadanomaly", "synth-acdc-poc", "synth-muad")
TARGET_FPS = 100.0


def frames_per_second(name: str, frames: int) -> tuple[float, float]:
    """(frames per wall second, frames per CPU second of this process) on one thread.

    The CPU-time rate is what one dedicated core delivers even on a shared machine.
    """
    dataset = get_dataset(name)
    dataset[0]  # warm caches (pixel grids, noise tiles)
    wall, cpu = time.perf_counter(), time.process_time()
    for index in range(frames):
        dataset[index % len(dataset)]
    return frames / (time.perf_counter() - wall), frames / (time.process_time() - cpu)


def energy_scores(model, dataset, batch_size: int = 50):
    """Per-frame energy (−logsumexp of logits), predictions, and labels of a dataset."""
    from ood_bench.models.inference import normalize_images

    scores, preds, semantics, oods, domains = [], [], [], [], []
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            logits = model(normalize_images(np.stack([s.image for s in samples]))).logits
            scores.append((-torch.logsumexp(logits, dim=1)).numpy())
            preds.append(logits.argmax(1).numpy())
            semantics += [s.semantic for s in samples]
            oods += [s.ood for s in samples]
            domains += [s.domain for s in samples]
    return (np.concatenate(scores), np.concatenate(preds), np.stack(semantics),
            np.stack(oods), np.array(domains))


def quality(model) -> None:
    from ood_bench.metrics.pixel import pixel_ood_metrics
    from ood_bench.metrics.segmentation import segmentation_metrics

    names = ("synth-cityscapes-val",) + DATASETS[1:]
    print(f"{'dataset':24s} {'domain':16s} {'mIoU':>6s} {'AUROC':>6s} {'AP':>6s} {'FPR95':>6s}")
    for name in names:
        score, pred, semantic, ood, domain = energy_scores(model, get_dataset(name))
        groups = [("all", np.ones(len(domain), bool))]
        if len(set(domain)) > 1:
            groups += [(d, domain == d) for d in dict.fromkeys(domain)]
        for label, keep in groups:
            seg = segmentation_metrics(pred[keep], semantic[keep])
            row = f"{name:24s} {label:16s} {100 * seg['miou']:6.1f}"
            if (ood[keep] == 1).any():
                m = pixel_ood_metrics(score[keep], ood[keep])
                row += f" {100 * m['auroc']:6.1f} {100 * m['ap']:6.1f} {100 * m['fpr95']:6.1f}"
            print(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300,
                        help="frames timed per dataset (0: skip timing)")
    parser.add_argument("--quality", action="store_true", help="also evaluate the base model")
    parser.add_argument("--checkpoint", help="weights to evaluate (default: the shipped model)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.frames:
        print(f"frames/s on one core at the default resolution (target {TARGET_FPS:.0f}):")
    for name in DATASETS if args.frames else ():
        wall, cpu = frames_per_second(name, args.frames)
        print(f"  {name:20s} {cpu:7.1f} frames/CPU-s  ratio {cpu / TARGET_FPS:.2f}"
              f"   ({wall:.1f} frames/wall-s)")
    if args.quality:
        from ood_bench.train import default_config, load_synthetic_base_model

        if args.checkpoint:
            from ood_bench.models.checkpoint import load_model

            config = default_config()
            model = load_model(config.model, args.checkpoint, **config.model_options)
        else:
            model = load_synthetic_base_model()
        quality(model.eval())


if __name__ == "__main__":
    main()
