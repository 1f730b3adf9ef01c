"""Errors that say what kind of failure they are; `cli.exit_code` maps each kind to an exit code.

- `DataError` and its kinds: bad input, exit 2 (retrying cannot help);
- `StorageUnavailable`: object storage did not answer after bounded retries, exit 3.
"""
from __future__ import annotations

import os


class DataError(ValueError):
    """A data file that is not valid SUSY input; the message names file and line."""

    def __init__(self, path: str | os.PathLike, line: int | None, problem: str, unit: str = "line"):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}, {unit} {line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class StorageDenied(DataError):
    """Object storage refused the credentials for a URI (exit 2: retrying will not help)."""


class StorageUnavailable(Exception):
    """Object storage did not answer after bounded retries (exit 3)."""
