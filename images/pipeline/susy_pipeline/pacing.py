"""A steady row rate: the producer standing in for a detector that writes to Kafka as data arrives.

`paced` cuts the file's batches (about 1 MiB of text each) into pieces of a tenth of a second's
rows and hands each out no earlier than its time (row n at start + n / rate), so the rate holds
on average and a late piece (a slow broker) is followed by the next ones at once until the
schedule is met again. Memory stays bounded: one file batch and the producer's read-ahead of a few
pieces. `repeat` reads the file again from `skip` when it ends (`produce --loop`). Setting `stop`
(the SIGTERM handler does) ends the iteration at the next piece, so the producer flushes and
records what it wrote.
"""
from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Callable, Iterable, Iterator

from .data import Batch

# A piece holds this many seconds of rows: small enough for a steady stream, large enough that
# the per-piece overhead (a sleep, a queue hand-off) stays below 1% at 10,000 rows/s.
PIECE_SECONDS = 0.1


def pieces(batch: Batch, size: int) -> Iterator[Batch]:
    """`batch` in consecutive slices of at most `size` rows."""
    for start in range(0, len(batch), size):
        stop = min(start + size, len(batch))
        yield replace(batch, labels=batch.labels[start:stop], features=batch.features[start:stop],
                      first_row=batch.first_row + start,
                      feature_text=None if batch.feature_text is None else batch.feature_text.slice(start, stop - start))


def paced(read: Callable[[], Iterable[Batch]], rate: float, *, rows_per_message: int = 1, repeat: bool = False,
          stop: threading.Event | None = None, clock: Callable[[], float] = time.monotonic) -> Iterator[Batch]:
    """The batches of `read()` at `rate` rows per second, again and again with `repeat`, until
    `stop` is set. Pieces are whole messages (a multiple of `rows_per_message`)."""
    if rate <= 0:
        raise ValueError("rate must be > 0")
    stop = stop or threading.Event()
    size = max(1, round(rate * PIECE_SECONDS / rows_per_message)) * rows_per_message
    started = clock()
    sent = 0
    while not stop.is_set():
        any_rows = False
        for batch in read():
            for piece in pieces(batch, size):
                # Event.wait, not sleep: a stop request cuts the wait short.
                if stop.wait(max(0.0, started + sent / rate - clock())):
                    return
                any_rows = True
                yield piece
                sent += len(piece)
        if not repeat or not any_rows:
            return
