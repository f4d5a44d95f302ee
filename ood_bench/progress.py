"""The rich progress bar every long-running oodbench loop shows (one look everywhere)."""

from __future__ import annotations

from typing import Any


def progress_bar(**options: Any):
    """A ``rich.progress.Progress`` with description, bar, M/N, an ``info`` field and times.

    Tasks must be added with an ``info=`` field (free text such as the loss and images/s);
    ``options`` go to ``Progress`` (``console``, ``disable``, ``transient``...).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        **options,
    )
