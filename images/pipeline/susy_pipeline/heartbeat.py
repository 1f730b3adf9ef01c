"""Heartbeats: what a running evaluator shard or trainer last reported, in the store.

A shard's `Heartbeat` thread overwrites one document (`store.put_heartbeat`, source `shard-I`)
every `HEARTBEAT_SECONDS` with the rows it has scored, the rows it plans to score (exact from
Parquet footers, estimated from bytes for CSV and marked so), and its rows/s; the trainer writes
one per epoch (source `trainer`). The operator folds them into the run's status and raises a
Warning Event when a pod still runs but its heartbeat has stopped (docs/operator.md).

The writes run on their own thread, off the scoring threads, and a failed write is logged and
skipped: a heartbeat never slows or fails the work it reports on (bench/bench_heartbeats.py
measures the cost).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

HEARTBEAT_ENV = "SUSY_HEARTBEAT_SECONDS"
# Every 5 s: the operator polls a running CR every few seconds, so a faster beat would not be
# seen sooner, and at 12 writes per shard per minute the store does not notice 100 shards.
HEARTBEAT_SECONDS = 5.0


def heartbeat_seconds(value: float | str | None = None) -> float:
    """The heartbeat interval: `value`, else SUSY_HEARTBEAT_SECONDS, else 5 s; 0 turns them off."""
    if value is None:
        value = os.environ.get(HEARTBEAT_ENV, HEARTBEAT_SECONDS)
    return max(0.0, float(value))


def shard_source(shard_index: int) -> str:
    return f"shard-{int(shard_index)}"


TRAINER_SOURCE = "trainer"


def identity() -> dict[str, Any]:
    """Where the beat comes from: the pod (its host name) and process."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


class Heartbeat:
    """Writes `beat()` under (`run`, `source`) every `every_s` seconds from a daemon thread.

    `stop(final)` ends the thread and writes `final` (the finished numbers) once more. `writes`
    counts the documents written, `failures` the writes the store refused.
    """

    def __init__(self, store: Any, run: str, source: str, beat: Callable[[], dict[str, Any]],
                 every_s: float = HEARTBEAT_SECONDS) -> None:
        self.store, self.run, self.source, self.beat = store, run, source, beat
        self.every_s = every_s
        self.writes = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self, beat: dict[str, Any]) -> None:
        try:
            self.store.put_heartbeat(self.run, self.source, {**identity(), **beat})
            self.writes += 1
        except Exception as err:  # a heartbeat is best effort: the next one may get through
            self.failures += 1
            log.warning("heartbeat of %s %s not written: %s", self.run, self.source, err)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.write(self.beat())

    def start(self) -> "Heartbeat":
        if self.every_s > 0 and self._thread is None:
            self.write(self.beat())
            self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{self.source}", daemon=True)
            self._thread.start()
        return self

    def stop(self, final: dict[str, Any] | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if final is not None:
                self.write(final)

    def __enter__(self) -> "Heartbeat":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def rate(rows: int, since: float) -> float:
    elapsed = time.monotonic() - since
    return rows / elapsed if elapsed > 0 else 0.0
