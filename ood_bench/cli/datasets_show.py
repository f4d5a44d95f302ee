"""``oodbench datasets show``: a PNG grid of sample frames per dataset and domain, labelled."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("show")
@click.argument("names", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="PNG file to write.")
@click.option("--per-domain", default=3, show_default=True, type=click.IntRange(min=1),
              help="Frames shown per dataset and domain.")
@click.option("--scale", default=2, show_default=True, type=click.IntRange(min=1, max=8),
              help="Integer enlargement of each frame.")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding the dataset folders (default: $OODBENCH_DATA, else ./data).")
def show(names: tuple[str, ...], out: Path, per_domain: int, scale: int,
         data_root: Path | None) -> None:
    """Save a grid of sample frames of each dataset NAME, one row per domain.

    Each cell shows the image and, beside it, the labels overlaid: Cityscapes trainId colours,
    OOD objects orange, outlier-exposure objects white, void unchanged.
    """
    from ood_bench.adapters import get_dataset
    from ood_bench.errors import OodBenchError
    from ood_bench.viz import save_grid

    if out.suffix.lower() != ".png":
        raise OodBenchError(f"--out must name a .png file, got {str(out)!r}")
    datasets = [get_dataset(name, data_root=data_root) for name in names]
    grid = save_grid(datasets, out, per_domain=per_domain, scale=scale)
    click.echo(f"wrote {out} ({grid.shape[1]}×{grid.shape[0]} px, {len(names)} dataset(s))")
