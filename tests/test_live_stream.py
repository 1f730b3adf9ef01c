"""`produce --rate R [--loop]`: a live stream standing in for a detector, against tansu: the rate
holds, memory stays flat, SIGTERM stops it cleanly with its offsets recorded (pacing.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from susy_pipeline.data import Batch
from susy_pipeline.kafka_offsets import log_offsets
from susy_pipeline.pacing import paced
from susy_pipeline.store import open_store


def _batch(n: int, first: int = 0) -> Batch:
    return Batch(labels=np.zeros(n, np.float32), features=np.zeros((n, 18), np.float32), first_row=first,
                 feature_text=pa.array([str(first + i) for i in range(n)]))


class FakeClock:
    """Time that passes only when the pacer waits (its `stop.wait` is the only sleep)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Waiting(threading.Event):
    def __init__(self, clock: FakeClock, stop_at: float | None = None) -> None:
        super().__init__()
        self.clock, self.stop_at = clock, stop_at

    def wait(self, timeout=None):
        self.clock.now += timeout or 0.0
        if self.stop_at is not None and self.clock.now >= self.stop_at:
            self.set()
        return self.is_set()


def test_pieces_come_at_the_rate_in_whole_messages_and_loop_until_stopped():
    clock = FakeClock()
    reads = []

    def read():
        reads.append(1)
        return iter([_batch(700), _batch(300, 700)])

    times, sizes = [], []
    for piece in paced(read, 200.0, rows_per_message=3, repeat=True, stop=Waiting(clock, stop_at=12.0),
                       clock=clock):
        times.append(clock.now)
        sizes.append(len(piece))
    # 200 rows/s, pieces of a tenth of a second rounded to whole 3-row messages: 21 rows.
    assert set(sizes[:-1]) <= {21, 700 % 21, 300 % 21}
    assert all(s % 3 == 0 for s in sizes if s == 21)
    sent = np.cumsum([0] + sizes[:-1])
    np.testing.assert_allclose(times, sent / 200.0, atol=1e-9)  # each piece at its scheduled time
    assert len(reads) == 3 and 2400 <= sum(sizes) <= 2400 + 21  # looped over 1,000 rows for 12 s
    once = list(paced(lambda: iter([_batch(50)]), 1e6, repeat=False))
    assert sum(len(p) for p in once) == 50


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.integration
def test_a_live_stream_keeps_its_rate_and_stops_on_sigterm_with_its_offsets_recorded(kafka_broker, store_path):
    """Topic live-stream, 2 partitions, one row a message: rows 0-1,999 of the sample looped at
    1,000 rows/s for about 6 s, then SIGTERM."""
    rate = 1000
    proc = subprocess.Popen([sys.executable, "-m", "susy_pipeline", "produce", "--rate", str(rate), "--loop",
                             "--limit", "2000", "--partitions", "2", "--bootstrap", kafka_broker, "--topic",
                             "live-stream", "--run-name", "live", "--store", store_path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.5)
        early = _rss_kib(proc.pid)
        time.sleep(4)
        late = _rss_kib(proc.pid)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    print(f"\n{result['rows']} rows in {result['seconds']} s ({result['rows_per_second']} rows/s), "
          f"RSS {early} -> {late} KiB")
    assert abs(result["rows_per_second"] - rate) < 0.1 * rate
    assert result["rows"] > 4000  # looped over the 2,000 rows more than twice
    assert late - early < 20_000  # KiB: three more loops over the file, no growth beyond noise
    assert result["source"]["stopped_by_signal"] is True
    with open_store(store_path) as store:
        recorded = store.get_production("live")
    assert recorded["partitions"] == result["partitions"]
    # The recorded ranges are every message on the topic: the log ends where they do.
    held = log_offsets(kafka_broker, "live-stream")
    assert {str(p): [0, end] for p, (_, end) in held.items()} == recorded["partitions"]
    assert sum(end for _, end in held.values()) == recorded["messages"] == recorded["rows"]


def test_the_live_producer_example_is_a_valid_deployment_running_produce_at_a_rate():
    """manifests/examples/live/producer.yaml: valid against the Kubernetes schema (strict), and its
    command line is one `produce` accepts (parsed by the real parser)."""
    from pathlib import Path

    import kubernetes_validate
    import yaml

    from susy_pipeline.cli import parser

    path = Path(__file__).resolve().parents[1] / "manifests" / "examples" / "live" / "producer.yaml"
    deployment = yaml.safe_load(path.read_text())
    kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[:3] == ["python", "-m", "susy_pipeline"]
    env = {e["name"]: e for e in container["env"]}
    assert "KAFKA_BOOTSTRAP" in env and "MONGODB_URI" in env
    args = parser().parse_args([*command[3:], "--bootstrap", env["KAFKA_BOOTSTRAP"]["value"]])
    assert args.command == "produce"
    assert args.rate == 200 and args.loop and args.topic == "susy-live"
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
