"""ReadAhead: the background reader the producer, the evaluator and the tfio reader share."""
from __future__ import annotations

import threading
import time

import pytest

from susy_pipeline.streams import ReadAhead, ReadAheadTimeout


def test_yields_everything_in_order_and_starts_before_the_first_next():
    started = threading.Event()

    def items():
        started.set()
        yield from range(100)

    reader = ReadAhead(items, depth=3)
    assert started.wait(5), "the thread should start at once, not at the first next()"
    assert list(reader) == list(range(100))
    assert next(reader, "done") == "done"


def test_an_error_in_the_thread_is_raised_to_the_consumer_after_the_items_before_it():
    def items():
        yield 1
        raise ValueError("bad line 7")

    reader = ReadAhead(items)
    assert next(reader) == 1
    with pytest.raises(ValueError, match="bad line 7"):
        next(reader)


def test_close_stops_the_thread_and_memory_stays_bounded():
    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    with ReadAhead(items, depth=2) as reader:
        assert next(reader) == 0
        time.sleep(0.3)
        assert len(produced) <= 4  # one taken, two queued, one waiting to be put
    reader._thread.join(timeout=5)
    assert not reader._thread.is_alive()
    assert next(reader, "closed") == "closed"


def test_a_read_that_hangs_gives_the_timeout_error():
    def items():
        yield 1
        threading.Event().wait(30)  # a native read that never returns
        yield 2

    reader = ReadAhead(items, timeout_s=0.5, on_timeout=lambda s: TimeoutError(f"no data for {s} s"))
    assert next(reader) == 1
    with pytest.raises(TimeoutError, match="no data for 0.5 s"):
        next(reader)
    plain = ReadAhead(lambda: iter(threading.Event().wait, True), timeout_s=0.2)
    with pytest.raises(ReadAheadTimeout):
        next(plain)
