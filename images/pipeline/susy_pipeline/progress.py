"""Progress a person can read: a bar on a terminal, log lines everywhere else.

When stderr is a terminal, `Progress` draws a rich bar with the rows done (of the rows planned,
where known), rows/s and an ETA, and the log lines of the run print above it. When stderr is not
a terminal (a Kubernetes Job, CI, a file), nothing is drawn: one log line every `log_every_s`
seconds says the same thing, so a pod's log stays readable.

`SUSY_PROGRESS=bar` or `=log` overrides the choice (`auto`, the default, asks `isatty`).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any, TextIO

log = logging.getLogger(__name__)

PROGRESS_ENV = "SUSY_PROGRESS"
# The bar redraws 4 times a second: often enough to read as moving, rare enough to cost nothing.
REFRESH_PER_SECOND = 4


def bars_wanted(stream: TextIO | None = None) -> bool:
    """Whether progress is drawn as a bar on `stream` (stderr): SUSY_PROGRESS, else isatty."""
    choice = os.environ.get(PROGRESS_ENV, "auto").strip().lower()
    if choice in ("bar", "log"):
        return choice == "bar"
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def format_eta(seconds: float | None) -> str:
    """`1:02:03`, `2:03` or `?` (no estimate yet)."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Rows (or another `unit`) done out of `total`, shown as a bar or logged.

    `update(done)` sets the count, `advance(n)` adds to it; both are cheap and thread-safe, so
    scoring threads can call them per chunk. `total` may be None (unknown) or set later
    (`set_total`); `estimated=True` marks it as an estimate (shown as `~`).
    """

    def __init__(self, description: str, total: int | None = None, *, unit: str = "rows",
                 estimated: bool = False, log_every_s: float = 10.0, logger: logging.Logger | None = None,
                 bar: bool | None = None) -> None:
        self.description = description
        self.total = total
        self.unit = unit
        self.estimated = estimated
        self.log_every_s = log_every_s
        self.logger = logger or log
        self.done = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._next_log = self.started + log_every_s
        self._bar = _Bar(self) if (bars_wanted() if bar is None else bar) else None

    # --- counting -------------------------------------------------------------------------
    def update(self, done: int) -> None:
        with self._lock:
            self.done = int(done)
        self._show()

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += int(n)
        self._show()

    def set_total(self, total: int | None, *, estimated: bool = False) -> None:
        self.total, self.estimated = total, estimated
        if self._bar is not None:
            self._bar.set_total(total)

    # --- what a person reads ----------------------------------------------------------------
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta_seconds(self) -> float | None:
        rate = self.rate()
        if not self.total or rate <= 0:
            return None
        return max(self.total - self.done, 0) / rate

    def line(self) -> str:
        """`DESCRIPTION: 1,234 of ~5,000 rows (24%), 810 rows/s, ETA 0:04`."""
        if self.total:
            of = f" of {'~' if self.estimated else ''}{self.total:,}"
            share = f" ({min(100, 100 * self.done // self.total)}%)"
        else:
            of = share = ""
        eta = f", ETA {format_eta(self.eta_seconds())}" if self.total else ""
        return f"{self.description}: {self.done:,}{of} {self.unit}{share}, {self.rate():,.0f} {self.unit}/s{eta}"

    def _show(self) -> None:
        if self._bar is not None:
            self._bar.update(self.done)
            return
        now = time.monotonic()
        if now >= self._next_log:
            self._next_log = now + self.log_every_s
            self.logger.info("%s", self.line())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Bar:
    """A rich progress bar on stderr, with the root logger's stderr lines printed above it."""

    def __init__(self, progress: Progress) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, Progress as RichProgress, TaskProgressColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        unit = progress.unit
        self._rich = RichProgress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.completed:,.0f}/{task.fields[total_text]} " + unit),
            TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr), refresh_per_second=REFRESH_PER_SECOND,
            redirect_stderr=True, redirect_stdout=False)
        self._progress = progress
        self._rich.start()
        self._task = self._rich.add_task(progress.description, total=progress.total,
                                         total_text=self._total_text(progress.total), rate="")
        self._handlers = _log_above_bar()

    def _total_text(self, total: int | None) -> str:
        if total is None:
            return "?"
        return f"{'~' if self._progress.estimated else ''}{total:,}"

    def set_total(self, total: int | None) -> None:
        self._rich.update(self._task, total=total, total_text=self._total_text(total))

    def update(self, done: int) -> None:
        self._rich.update(self._task, completed=done,
                          rate=f"{self._progress.rate():,.0f} {self._progress.unit}/s")

    def close(self) -> None:
        self.update(self._progress.done)
        self._rich.refresh()
        _restore(self._handlers)
        self._rich.stop()


def _log_above_bar() -> list[tuple[logging.StreamHandler, Any]]:
    """Point the stderr log handlers at rich's stderr proxy (set up by `start`), so log lines print
    above the bar instead of through it; returns what `_restore` puts back."""
    moved = []
    proxy = sys.stderr
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (
                sys.__stderr__, getattr(proxy, "rich_proxied_file", None)):
            moved.append((handler, handler.stream))
            handler.setStream(proxy)
    return moved


def _restore(moved: list[tuple[logging.StreamHandler, Any]]) -> None:
    for handler, stream in moved:
        handler.setStream(stream)
