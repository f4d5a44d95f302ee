"""Exception types shared by the whole toolkit.

Every error caused by user input (a bad argument, a missing file, a malformed dataset) is an
``OodBenchError``; the CLI turns it into a one-paragraph message and exit code 2, no traceback.
"""


class OodBenchError(ValueError):
    """Bad user input: an argument, file or dataset that is not what oodbench expects."""


class UnknownNameError(OodBenchError, KeyError):
    """A name that is not in a registry (model, dataset, method...)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataNotFoundError(OodBenchError, FileNotFoundError):
    """A dataset root, file or checkpoint that does not exist where it was expected."""
