"""``oodbench augment``: CG-Aug generation of coherent multi-shift training images."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import OodBenchError


def _class_list(value: str) -> list[str]:
    """Comma-separated names/ids, or a text file with one per line."""
    path = Path(value)
    entries = path.read_text().splitlines() if path.is_file() else value.split(",")
    return [entry.strip() for entry in entries if entry.strip()]


def _mapping(path: Path) -> dict[int, int]:
    """The full → SceneParsing id table from a JSON object."""
    try:
        table = json.loads(path.read_text())
        return {int(key): int(value) for key, value in table.items()}
    except (ValueError, AttributeError) as error:
        raise OodBenchError(f"--ade20k-mapping {str(path)!r} must be a JSON object of integer "
                            f"ids ({error})") from None


def _object_source(objects: str, root: Path | None, classes: str | None,
                   mapping: Path | None):
    """The novel-object source the options name."""
    from ood_bench.cgaug.sources import FullADE20KObjects, SceneParsingObjects, SyntheticObjects

    if objects == "synthetic":
        return SyntheticObjects()
    if root is None or classes is None:
        raise OodBenchError("--objects ade20k needs --ade20k-root and --ade20k-classes "
                            "(the paper's 82 train classes are not shipped; see README)")
    if mapping is None:
        return SceneParsingObjects(root, _class_list(classes))
    return FullADE20KObjects(root, _class_list(classes), _mapping(mapping))


@click.command()
@click.option("--generator", "generator_name", type=click.Choice(["synthetic", "controlnet"]),
              required=True, help="Semantic-to-image generator.")
@click.option("--source-dataset", required=True, help="Registered dataset whose frames are "
              "augmented (e.g. synth-cityscapes, cityscapes).")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="Root folder of the source dataset.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--objects", type=click.Choice(["ade20k", "synthetic"]), default=None,
              help="Novel-object source (default: synthetic for synth-* datasets, else ade20k).")
@click.option("--ade20k-root", type=click.Path(path_type=Path), default=None,
              help="ADEChallengeData2016 folder (SceneParsing layout), or ADE20K_2021_17_01 "
              "with --ade20k-mapping (full layout).")
@click.option("--ade20k-mapping", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="JSON {full ADE20K id: SceneParsing id}: reads the full ADE20K "
              "layout instead of SceneParsing.")
@click.option("--ade20k-classes", default=None, help="Novel ADE20K classes: comma-separated "
              "names or 1-based ids, or a file with one per line (required with ade20k).")
@click.option("--controlnet", default=None, help="Segmentation ControlNet folder (diffusers).")
@click.option("--sd", default=None, help="Stable Diffusion 1.5 folder (diffusers).")
@click.option("--sam", default=None, help="SAM folder (transformers) for the mask filter; "
              "required with controlnet. Without it the synthetic renderer's exact mask is used.")
@click.option("--anomaly-method", default=None, help="Zoo method (e.g. energy) for the anomaly "
              "check with the synthetic base model (synth-* datasets). Default: no check.")
@click.option("--steps", type=click.IntRange(1), default=50, show_default=True,
              help="DDIM steps of the ControlNet generator.")
@click.option("--short-side", type=click.IntRange(64), default=512, show_default=True,
              help="Short side of the ControlNet's working resolution (multiples of 64).")
@click.option("--max-tries", type=click.IntRange(1), default=5, show_default=True)
@click.option("--split", default="train", show_default=True, help="Split folder name written.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N frames.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def augment(generator_name, source_dataset, root, out, objects, ade20k_root, ade20k_mapping,
            ade20k_classes, controlnet, sd, sam, anomaly_method, steps, short_side, max_tries,
            split, limit, seed, quiet):
    """Generate one filtered, coherent image with a pasted novel object per source frame."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from ood_bench.adapters import get_dataset
    from ood_bench.cgaug.filtering import AnomalyCheck, AutoFilter, SamMasker
    from ood_bench.cgaug.generators import ControlNetGenerator, SyntheticGenerator
    from ood_bench.cgaug.pipeline import generate_dataset

    synthetic = source_dataset.startswith("synth-")
    objects = objects or ("synthetic" if synthetic else "ade20k")
    if generator_name == "synthetic" and not synthetic:
        raise OodBenchError("--generator synthetic renders synthetic layouts: use a synth-* "
                            "--source-dataset")
    if generator_name == "synthetic" and objects != "synthetic":
        raise OodBenchError("--generator synthetic renders the synthetic object family: use "
                            "--objects synthetic")
    if generator_name == "controlnet" and (controlnet is None or sd is None or sam is None):
        raise OodBenchError("--generator controlnet needs --controlnet DIR, --sd DIR and "
                            "--sam DIR (local weights; nothing is downloaded)")
    source = _object_source(objects, ade20k_root, ade20k_classes, ade20k_mapping)
    if generator_name == "controlnet":
        generator = ControlNetGenerator(controlnet, sd, steps=steps, short_side=short_side)
    else:
        generator = SyntheticGenerator()
    anomaly = None
    if anomaly_method is not None and not synthetic:
        raise OodBenchError("--anomaly-method uses the synthetic base model: only with synth-* "
                            "datasets (use the Python API, AnomalyCheck, with your own model)")
    if anomaly_method is not None:
        from ood_bench.baselines import get_method
        from ood_bench.train import load_synthetic_base_model

        anomaly = AnomalyCheck(load_synthetic_base_model(), get_method(anomaly_method))
    masker = SamMasker(sam) if sam is not None else None
    dataset = get_dataset(source_dataset, root)
    total = len(dataset) if limit is None else min(limit, len(dataset))
    columns = (TextColumn("[bold]augment"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), disable=quiet) as progress:
        task = progress.add_task("augment", total=total, rate="- images/s")

        def advance() -> None:
            progress.advance(task)
            speed = progress.tasks[0].speed
            progress.update(task, rate=f"{speed:.2f} images/s" if speed else "- images/s")

        stats = generate_dataset(dataset, generator, source, out, filter=AutoFilter(masker,
                                 anomaly), split=split, limit=limit, seed=seed,
                                 max_tries=max_tries, on_frame=advance)
    rate = stats.written / stats.seconds if stats.seconds else 0.0
    click.echo(f"written {stats.written}, skipped (done) {stats.skipped}, no road "
               f"{stats.no_road}, given up {stats.exhausted}, rejected tries {stats.rejected}; "
               f"{rate:.2f} images/s -> {out}")
