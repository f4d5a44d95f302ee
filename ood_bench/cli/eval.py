"""``oodbench eval``: recompute metrics from score stores, without the model or the images."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("eval")
@click.option("--store", "stores", multiple=True, required=True,
              type=click.Path(path_type=Path), help="Score store file(s) (.h5) to evaluate.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Also write the rows to <OUT>/results.jsonl and results.csv.")
@click.option("--verify", is_flag=True,
              help="First check every frame against its recorded SHA-256 (exit 2 if damaged).")
def evaluate(stores: tuple[Path, ...], out: Path | None, verify: bool) -> None:
    """Recompute AUROC, AP, FPR@95, mIoU, mAcc (and SMIYC component metrics) of each STORE.

    The labels are stored with the scores, so this needs neither the model nor the dataset;
    the numbers equal those of the `oodbench run` that wrote the store.
    """
    from rich.console import Console

    from ood_bench.cli.run import print_results
    from ood_bench.errors import OodBenchError
    from ood_bench.results import append_result
    from ood_bench.runner import evaluate_store
    from ood_bench.store import ScoreStore, verify_store

    for store in stores if verify else ():
        problems = verify_store(ScoreStore(store))
        if problems:
            raise OodBenchError(f"score store {str(store)!r} is damaged: {'; '.join(problems)}")
    rows = [evaluate_store(store) for store in stores]
    if out is not None:
        for row in rows:
            append_result(out, row)
    print_results(rows, Console())
