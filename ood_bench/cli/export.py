"""``oodbench export smiyc``: a score store as SegmentMeIfYouCan toolkit submission files."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("export")
def export() -> None:
    """Export score stores to other tools' layouts."""


@export.command("smiyc")
@click.option("--store", "stores", multiple=True, required=True,
              type=click.Path(path_type=Path), help="Score store(s) written by oodbench run.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Output root (the toolkit's DIR_OUTPUTS/anomaly_p).")
@click.option("--method-name", default=None,
              help="Submission name (default: the stored method name).")
def smiyc(stores: tuple[Path, ...], out: Path, method_name: str | None) -> None:
    """Write <OUT>/<method>/<dataset>/<frame>.hdf5 (dataset `value`, float16, gzip 9)."""
    from ood_bench.export import export_smiyc

    for store in stores:
        folder = export_smiyc(store, out, method_name)
        click.echo(f"{store} -> {folder}")
