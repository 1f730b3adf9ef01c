"""moto's S3 server on loopback: a real S3-protocol endpoint for the tests.

moto lives in its own virtualenv (`make tools`: .venv/opt/moto), because botocore pins
python-dateutil<3 and the kubernetes client needs >=3; the tests only talk to it over HTTP.
By default moto accepts any credentials. With `check_credentials=True` it checks them as AWS
does (INITIAL_NO_AUTH_ACTION_COUNT=0), and since no IAM user exists, every key is refused.
With `tls=True` it serves https:// with a self-signed certificate for 127.0.0.1 (`self.ca`, made
by the openssl command line).
"""
from __future__ import annotations

import os
import ssl
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
    def __init__(self, workdir: Path, *, check_credentials: bool = False, tls: bool = False) -> None:
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        env = {**os.environ}
        if check_credentials:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        cmd = [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)]
        self.ca: Path | None = None
        if tls:
            self.ca, key = workdir / "moto-cert.pem", workdir / "moto-key.pem"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                            "-keyout", str(key), "-out", str(self.ca)], check=True, capture_output=True)
            cmd += ["-c", str(self.ca), "-k", str(key)]
        name = "moto-auth.log" if check_credentials else "moto-tls.log" if tls else "moto.log"
        self.log = open(workdir / name, "wb")
        self.process = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_for_port("127.0.0.1", self.port, 30)

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point an S3 client at this server."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.url}

    def create_bucket(self, name: str) -> None:
        context = ssl.create_default_context(cafile=str(self.ca)) if self.ca else None
        request = urllib.request.Request(f"{self.url}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=10, context=context):
            pass

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.close()
