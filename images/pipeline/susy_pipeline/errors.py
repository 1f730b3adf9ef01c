"""Errors that carry their exit code (contracts.md §1): imported by every stage, imports only redaction.

- `BadInput` (exit 2): the input or the options are wrong; retrying the same thing cannot help,
  so a Job's podFailurePolicy ends it (FailJob / FailIndex). `DataError` and its kinds.
- `Unavailable` (exit 3): a dependency (Kafka, the store, object storage, the network) did not
  answer after bounded retries; the Job retries the pod.
- anything else (exit 1, with a traceback): a bug or an unforeseen failure. A `KeyError` or a
  `ValueError` from the code itself is one of these, never "bad input".
"""
from __future__ import annotations

import os
from typing import ClassVar

from .redaction import display_uri

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_UNAVAILABLE = 1, 2, 3


class PipelineError(Exception):
    """A failure the pipeline foresaw; `exit_code` says which kind."""
    exit_code: ClassVar[int] = EXIT_FAILED


class BadInput(PipelineError, ValueError):
    exit_code: ClassVar[int] = EXIT_BAD_INPUT


class Unavailable(PipelineError):
    exit_code: ClassVar[int] = EXIT_UNAVAILABLE


def exit_code(err: BaseException) -> int:
    """2 for BadInput, 3 for Unavailable, 1 for everything else."""
    return err.exit_code if isinstance(err, PipelineError) else EXIT_FAILED


class DataError(BadInput):
    """A data file that is not valid SUSY input; the message names file and line (the file as
    `redaction.display_uri` shows a location: no user, password or query)."""

    def __init__(self, path: str | os.PathLike, line: int | None, problem: str, unit: str = "line"):
        self.path = display_uri(str(path), path=True)
        self.line = line
        self.problem = problem
        where = f"{self.path}, {unit} {line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class StorageDenied(DataError):
    """Object storage refused the credentials for a URI (exit 2: retrying will not help)."""


class StorageUnavailable(Unavailable):
    """Object storage did not answer after bounded retries (exit 3)."""
