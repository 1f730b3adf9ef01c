"""moto's S3 server on loopback: a real S3-protocol endpoint for the tests.

moto lives in its own virtualenv (`make tools`: .venv/opt/moto), because botocore pins
python-dateutil<3 and the kubernetes client needs >=3; the tests only talk to it over HTTP.
By default moto accepts any credentials. With `check_credentials=True` it checks them as AWS
does (INITIAL_NO_AUTH_ACTION_COUNT=0), and since no IAM user exists, every key is refused.
"""
from __future__ import annotations

import os
import subprocess
import urllib.request
from pathlib import Path

from susy_pipeline.broker import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
MOTO_SERVER = REPO / ".venv" / "opt" / "moto" / "bin" / "moto_server"

# Credentials moto accepts (it checks none by default); any region works.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}


def moto_missing() -> str | None:
    return None if MOTO_SERVER.exists() else f"{MOTO_SERVER} is missing (run `make tools`)"


class MotoServer:
    def __init__(self, workdir: Path, *, check_credentials: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ}
        if check_credentials:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        name = "moto-auth.log" if check_credentials else "moto.log"
        self.log = open(workdir / name, "wb")
        self.process = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_for_port("127.0.0.1", self.port, 30)

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point an S3 client at this server."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.url}

    def create_bucket(self, name: str) -> None:
        with urllib.request.urlopen(urllib.request.Request(f"{self.url}/{name}", method="PUT"), timeout=10):
            pass

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.close()
