"""Command-line interface (``oodbench``)."""

from .app import CliError, main

__all__ = ["CliError", "main"]
