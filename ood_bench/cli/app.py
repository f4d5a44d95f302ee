"""The ``oodbench`` command group: one module per sub-command, imported only when used."""

from __future__ import annotations

import importlib

import click

from .. import __version__
from ..errors import OodBenchError

# name -> "module:attribute" (relative to ood_bench.cli). Adding a command is one line here
# plus its own module, which keeps ``oodbench --help`` fast: torch is imported only by commands
# that need it.
COMMANDS: dict[str, str] = {
    "augment": "augment:augment",
    "check": "check:check",
    "datasets": "datasets:datasets",
    "eval": "eval:evaluate",
    "export": "export:export",
    "metrics": "metrics:metrics",
    "run": "run:run",
    "plot": "plot:plot",
    "table": "table:table",
    "train": "train:train",
}


class CliError(click.ClickException):
    """A user-input error: printed as ``Error: ...`` with exit code 2, never a traceback."""

    exit_code = 2


class LazyGroup(click.Group):
    """A click group that imports sub-command modules on demand and maps input errors to exit 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module_name, attribute = COMMANDS[name].split(":")
            module = importlib.import_module(f"{__package__}.{module_name}")
            return getattr(module, attribute)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OodBenchError as error:
            raise CliError(str(error)) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="oodbench")
def main() -> None:
    """oodbench: semantic segmentation under covariate and semantic distribution shifts.

    Load the standard benchmarks with the right label conventions, run OOD methods on your
    checkpoints, and compute trustworthy pixel, segmentation and component metrics.
    """
