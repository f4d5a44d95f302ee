"""``oodbench train``: train a segmentation model on a registered dataset, cached by config.

The default recipe trains the synthetic benchmark's base model in a few CPU minutes; a second
call with the same options loads the cached checkpoint instantly (``--retrain`` retrains).
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("train")
@click.option("--model", default="deeplabv3plus-small", show_default=True,
              help="Registered model name (see the README's model list).")
@click.option("--dataset", default="synth-cityscapes", show_default=True,
              help="Registered dataset with semantic labels to train on.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of initialisation and data order.")
@click.option("--steps", default=None, type=click.IntRange(min=1),
              help="Optimiser steps (default: the recipe's).")
@click.option("--batch-size", default=None, type=click.IntRange(min=1),
              help="Images per step (default: the recipe's).")
@click.option("--retrain", is_flag=True, help="Train even if a cached checkpoint exists.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also copy the checkpoint (.safetensors) and its .json record here.")
def train(model: str, dataset: str, seed: int, steps: int | None, batch_size: int | None,
          retrain: bool, out: Path | None) -> None:
    """Train MODEL on DATASET with cross-entropy (deterministic given --seed).

    Prints the checkpoint path and the validation metrics; the checkpoint is cached under
    $OODBENCH_CACHE/models (default ~/.cache/oodbench/models), keyed by the config hash.
    """
    from rich.console import Console

    from ood_bench.adapters.base import DATASETS
    from ood_bench.errors import OodBenchError
    from ood_bench.models.base import MODELS
    from ood_bench.train import default_config, write_record
    from ood_bench.train import train as run_training

    MODELS.factory(model)  # unknown names fail here, before any frame is rendered
    DATASETS.factory(dataset)
    if out is not None and out.suffix != ".safetensors":
        raise OodBenchError(f"--out must name a .safetensors file, got {str(out)!r}")
    overrides = {"seed": seed}
    if steps is not None:
        overrides["steps"] = steps
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    config = default_config(model, dataset, **overrides)
    command = f"oodbench train --model {model} --dataset {dataset} --seed {seed}"
    command += f" --steps {steps}" if steps is not None else ""
    command += f" --batch-size {batch_size}" if batch_size is not None else ""
    console = Console(stderr=True)
    result = run_training(config, retrain=retrain, console=console, command=command)
    state = "cached" if result.cached else "trained"
    click.echo(f"{state}: {result.path} (config {config.hash})")
    for name, metrics in result.record.get("metrics", {}).items():
        miou, macc = 100 * metrics["miou"], 100 * metrics["macc"]
        click.echo(f"{name}: mIoU {miou:.1f} %, mAcc {macc:.1f} %")
    if out is not None:
        from ood_bench.io import atomic_write

        with atomic_write(out) as handle:
            handle.write(result.path.read_bytes())
        write_record(result.record, out.with_suffix(".json"))
        click.echo(f"copied to {out} and {out.with_suffix('.json')}")
