"""``oodbench datasets``: list the registered datasets and verify one on disk."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .datasets_show import show

DATA_ROOT_HELP = "Folder holding the dataset folders (default: $OODBENCH_DATA, else ./data)."


def _parse_options(pairs: tuple[str, ...]) -> dict[str, object]:
    """``KEY=VALUE`` pairs → keyword options; values are JSON when they parse, else strings."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--option")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


@click.group("datasets", invoke_without_command=True)
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), help=DATA_ROOT_HELP)
@click.pass_context
def datasets(ctx: click.Context, data_root: Path | None) -> None:
    """List every registered dataset, whether it is found under the data root, and its frames.

    Sub-commands verify or inspect one dataset, e.g. "oodbench datasets check roadanomaly".
    """
    if ctx.invoked_subcommand is None:
        _list(data_root)


def _list(data_root: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from ood_bench.adapters import dataset_info, default_root, get_dataset, list_datasets
    from ood_bench.errors import OodBenchError

    table = Table("dataset", "found", "frames", "expected", "folder", "note")
    for name in list_datasets():
        info = dataset_info(name)
        root = default_root(name, data_root)
        folder = "(generated)" if root is None else str(root)
        expected = "?" if info.frames is None else str(info.frames)
        if root is not None and not root.is_dir():
            table.add_row(name, "no", "-", expected, folder, "")
            continue
        try:
            count = len(get_dataset(name, data_root=data_root))
        except OodBenchError as error:
            table.add_row(name, "error", "-", expected, folder, str(error))
            continue
        note = "frame count differs" if info.frames not in (None, count) else ""
        table.add_row(name, "yes", str(count), expected, folder, note)
    Console(width=200).print(table)


@datasets.command("check")
@click.argument("name")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), help=DATA_ROOT_HELP)
@click.option("--root", type=click.Path(file_okay=False, path_type=Path),
              help="The dataset's own folder (overrides --data-root).")
@click.option("--option", "-o", "pairs", multiple=True, metavar="KEY=VALUE",
              help="Dataset option, JSON-parsed when possible (-o void=poc, -o 'ood_ids=[19]').")
@click.option("--limit", type=click.IntRange(min=1), help="Check only the first N frames.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Decode frames in this many worker processes.")
@click.pass_context
def check(
    ctx: click.Context, name: str, data_root: Path | None, root: Path | None,
    pairs: tuple[str, ...], limit: int | None, workers: int,
) -> None:
    """Verify dataset NAME: its frame count and every frame's files and label values.

    Exit code 0 when everything matches, 1 when problems were found (listed per file), 2 when
    the dataset cannot be opened at all (unknown name, missing root, wrong layout).
    """
    from rich.console import Console
    from rich.progress import Progress
    from torch.utils.data import DataLoader

    from ood_bench.adapters import dataset_info, get_dataset

    dataset = get_dataset(name, root, data_root=data_root, **_parse_options(pairs))
    expected = dataset_info(name).frames
    problems: list[tuple[str, str]] = []
    if expected is not None and len(dataset) != expected:
        problems.append(("(count)", f"{len(dataset)} frames found, expected {expected}"))
    total = len(dataset) if limit is None else min(limit, len(dataset))
    frames = DataLoader(_FrameChecks(dataset, total), batch_size=None, num_workers=workers)
    with Progress(console=Console(stderr=True), transient=True) as progress:
        for frame, found in progress.track(frames, total=total, description=f"checking {name}"):
            problems += [(frame, p) for p in found]
    for frame, problem in problems:  # one plain line per problem: paths stay copyable
        click.echo(f"{frame}: {problem}")
    click.echo(f"{name}: {total} of {len(dataset)} frames checked, {len(problems)} problem(s)")
    if problems:
        ctx.exit(1)


class _FrameChecks:
    """``(frame name, problems)`` of the first ``total`` frames, indexable for a DataLoader."""

    def __init__(self, dataset, total: int) -> None:
        self.dataset, self.total = dataset, total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: int) -> tuple[str, list[str]]:
        return self.dataset.frame_name(index), self.dataset.check(index)


datasets.add_command(show)
