"""Run an iterator in a background thread, a few items ahead of its consumer.

Used where I/O and parsing (which release the GIL: pyarrow, sockets) can
overlap the work on the items: the producer's file reads, the evaluator's
chunk reads, and every tensorflow-io read, which may hang rather than raise
and so gets a timeout.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")

_DONE = object()


class ReadAheadTimeout(TimeoutError):
    """No item arrived within the allowed time."""


class ReadAhead(Iterator[T]):
    """Yield what `items` yields, produced in a daemon thread at most `depth` ahead.

    The thread starts at once, so reading can begin while the caller is still
    setting up (the producer connects to Kafka meanwhile). Exceptions in the
    thread re-raise here. With `timeout_s`, waiting longer than that for one
    item raises `on_timeout(timeout_s)` (or ReadAheadTimeout); the thread is
    left behind, as a hung native read cannot be interrupted. Stop early with
    `close()` (or `with`); exhausting it or an error closes it too.
    """

    def __init__(self, items: Callable[[], Iterable[T]] | Iterable[T], *, depth: int = 2,
                 timeout_s: float | None = None, name: str = "read-ahead",
                 on_timeout: Callable[[float], BaseException] | None = None):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)  # bounded: memory stays flat
        self._stop = threading.Event()
        self._timeout_s = timeout_s
        self._name = name
        self._on_timeout = on_timeout
        self._thread = threading.Thread(target=self._pump, args=(items,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _pump(self, items) -> None:
        try:
            for item in (items() if callable(items) else items):
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as err:  # handed to the consumer
            self._put(err)

    def __iter__(self) -> "ReadAhead[T]":
        return self

    def __next__(self) -> T:
        if self._stop.is_set():
            raise StopIteration
        try:
            item = self._queue.get(timeout=self._timeout_s)
        except queue.Empty:
            self.close()
            raise (self._on_timeout(self._timeout_s) if self._on_timeout else
                   ReadAheadTimeout(f"{self._name}: nothing for {self._timeout_s:.0f} s")) from None
        if item is _DONE:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        """Stop the thread (it ends at its next item; a hung read is left behind)."""
        self._stop.set()
        if self._timeout_s is None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> "ReadAhead[T]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self._stop.set()
