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


def read_ahead(items: Callable[[], Iterable[T]] | Iterable[T], *, depth: int = 2,
               timeout_s: float | None = None, name: str = "read-ahead",
               on_timeout: Callable[[float], BaseException] | None = None) -> Iterator[T]:
    """Yield what `items` yields, produced in a daemon thread at most `depth` ahead.

    Exceptions in the thread re-raise here. With `timeout_s`, waiting longer
    than that for one item raises `on_timeout(timeout_s)` (or ReadAheadTimeout);
    the thread is left behind, as a hung native read cannot be interrupted.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)  # bounded: memory stays flat
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for item in (items() if callable(items) else items):
                if not put(item):
                    return
            put(_DONE)
        except BaseException as err:  # handed to the consumer
            put(err)

    thread = threading.Thread(target=pump, name=name, daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = q.get(timeout=timeout_s)
            except queue.Empty:
                raise (on_timeout(timeout_s) if on_timeout else
                       ReadAheadTimeout(f"{name}: nothing for {timeout_s:.0f} s")) from None
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        if timeout_s is None:
            thread.join(timeout=5)
