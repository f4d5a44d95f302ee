"""``oodbench train``: train a segmentation model on a registered dataset, cached by config.

The default recipe trains the synthetic benchmark's base model in a few CPU minutes; a second
call with the same options loads the cached checkpoint instantly (``--retrain`` retrains).

``--method NAME`` instead fits a method that needs training (``cgaug``, ``rpl``, ``ruleaug``...)
on DATASET, on top of the synthetic base model (synth-* datasets) or ``--checkpoint``; the
method caches its result the same way.
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
@click.option("--method", default=None,
              help="Fit this method (e.g. cgaug) on DATASET instead of training a model.")
@click.option("--checkpoint", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="With --method: weights of --model to start from (default on synth-* "
                   "datasets: the synthetic base model).")
@click.option("--fit-option", "fit_option", multiple=True, metavar="KEY=VALUE",
              help="With --method: an option of its fit, e.g. max_frames=64 or "
                   "generated=DIR (repeatable).")
def train(model: str, dataset: str, seed: int, steps: int | None, batch_size: int | None,
          retrain: bool, out: Path | None, method: str | None, checkpoint: Path | None,
          fit_option: tuple[str, ...]) -> None:
    """Train MODEL on DATASET with cross-entropy (deterministic given --seed).

    Prints the checkpoint path and the validation metrics; the checkpoint is cached under
    $OODBENCH_CACHE/models (default ~/.cache/oodbench/models), keyed by the config hash.
    With --method, fits that method instead (--out then saves its fine-tuned model).
    """
    from rich.console import Console

    from ood_bench.adapters.base import DATASETS
    from ood_bench.errors import OodBenchError
    from ood_bench.models.base import MODELS
    from ood_bench.train import default_config, write_record
    from ood_bench.train import train as run_training

    MODELS.factory(model)  # unknown names fail here, before any frame is rendered
    DATASETS.factory(dataset)
    if method is not None:
        fit_method(method, model, dataset, checkpoint, seed, steps, fit_option, out,
                   batch_size=batch_size, retrain=retrain)
        return
    if checkpoint is not None or fit_option:
        raise OodBenchError("--checkpoint and --fit-option go with --method")
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


def fit_method(method: str, model: str, dataset: str, checkpoint: Path | None, seed: int,
               steps: int | None, fit_option: tuple[str, ...], out: Path | None, *,
               batch_size: int | None, retrain: bool) -> None:
    """``oodbench train --method``: fit ``method`` on ``dataset`` (cached by the method)."""
    import inspect

    from ood_bench.adapters import get_dataset
    from ood_bench.baselines import get_method
    from ood_bench.errors import OodBenchError
    from ood_bench.runner import SYNTHETIC_MODEL, load_run_model

    from .run import parse_options

    if batch_size is not None or retrain:
        raise OodBenchError("--batch-size and --retrain train models, not methods: set a "
                            "method's schedule with --steps and --fit-option")
    if out is not None and out.suffix != ".safetensors":
        raise OodBenchError(f"--out must name a .safetensors file, got {str(out)!r}")
    fitted = get_method(method)
    if not fitted.requires_fit:
        raise OodBenchError(f"method {method!r} needs no training")
    options = parse_options(fit_option, "--fit-option")
    accepted = set(inspect.signature(fitted.fit).parameters) - {"model", "train_dataset"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise OodBenchError(f"method {method!r} takes no fit option {', '.join(unknown)}; "
                            f"valid: {', '.join(sorted(accepted))}")
    if steps is not None:
        options["steps"] = steps
    name = None if checkpoint is None and model == SYNTHETIC_MODEL else model
    loaded = load_run_model(name, checkpoint, {}, dataset)
    fitted.fit(loaded.module, get_dataset(dataset), seed=seed, progress=True, **options)
    click.echo(f"fitted {method} on {dataset} with {loaded.name} (cache key "
               f"{fitted.config().get('trained')})")
    if out is not None:
        from ood_bench.models.checkpoint import save_checkpoint

        tuned = getattr(fitted, "model", None)
        if tuned is None:
            raise OodBenchError(f"method {method!r} keeps no fine-tuned model to save with --out")
        save_checkpoint(tuned, out)
        click.echo(f"saved the fine-tuned model to {out}")
