"""Kafka over TLS for real, and the client security settings (susy_pipeline/kafka_security.py).

TLS: Debian's stunnel terminates TLS in front of a tansu broker (tansu 0.6.0's own TLS listener
did not serve TLS here), tansu advertising the stunnel port, with a CA and a server certificate
made in the test (the openssl command line). The producer, the topic admin and both readers
connect through it with KAFKA_SECURITY_PROTOCOL=SSL and the test CA; a CA that does not match
ends the command at once with exit 2 naming the broker and the cause.

SASL: no server here offers PLAIN or SCRAM (tansu's --authentication is not one of them), so the
SASL settings are shown reaching both clients' configurations, not a handshake.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TFIO_TANSU_SETTINGS
from susy_pipeline import kafka_io
from susy_pipeline.broker import free_port, tansu_binary, wait_for_port
from susy_pipeline.data import iter_batches
from susy_pipeline.errors import BadInput
from susy_pipeline.kafka_security import KafkaSecurity

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "susy-sample.csv.gz"
ROWS = 600


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(cert))
    return cert, key


def make_server_cert(folder: Path, ca: tuple[Path, Path]) -> Path:
    """A certificate for 127.0.0.1 and localhost signed by `ca`, with its key, in one PEM file."""
    key, csr, cert = folder / "server-key.pem", folder / "server.csr", folder / "server.pem"
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "1", "-extfile", str(ext), "-out", str(cert))
    bundle = folder / "stunnel.pem"
    bundle.write_text(cert.read_text() + key.read_text())
    return bundle


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    if stunnel is None or shutil.which("openssl") is None:
        pytest.skip("needs Debian's stunnel4 and openssl (.ci/run installs stunnel4)")
    folder = tmp_path_factory.mktemp("kafka-tls")
    ca = make_ca(folder, "test-ca")
    other_ca, _ = make_ca(folder, "other-ca")
    bundle = make_server_cert(folder, ca)
    plain, tls = free_port(), free_port()
    broker = subprocess.Popen([str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{plain}",
                               "--advertised-listener-url", f"tcp://127.0.0.1:{tls}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    config = folder / "stunnel.conf"
    config.write_text(f"foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls}\n"
                      f"connect = 127.0.0.1:{plain}\ncert = {bundle}\n")
    tunnel = subprocess.Popen([stunnel, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", plain, 30)
        wait_for_port("127.0.0.1", tls, 30)
        yield {"bootstrap": f"127.0.0.1:{tls}", "ca": str(ca[0]), "other_ca": str(other_ca)}
    finally:
        tunnel.terminate()
        broker.terminate()
        tunnel.wait(10)
        broker.wait(10)


def test_producer_and_both_readers_over_tls(tls_broker: dict[str, str]) -> None:
    security = KafkaSecurity.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": tls_broker["ca"]})
    topic = f"tls-{time.monotonic_ns()}"
    production = kafka_io.produce(iter_batches(str(SAMPLE), limit=ROWS, keep_text=True),
                                  bootstrap=tls_broker["bootstrap"], topic=topic, partitions=2, security=security)
    assert production.rows == ROWS
    ranges = {int(p): tuple(r) for p, r in production.to_record()["partitions"].items()}
    expected = sorted(line.decode() for line in _sample_values(ROWS))
    by_python = [v for _, values in kafka_io.kafka_python_batches(tls_broker["bootstrap"], topic, ranges,
                                                                    security=security) for v in values]
    assert sorted(v.decode() if isinstance(v, bytes) else v for v in by_python) == expected
    assert sorted(_tfio_values(tls_broker, topic, ranges)) == expected


def _tfio_values(tls_broker: dict[str, str], topic: str, ranges: dict) -> list[str]:
    """The tensorflow-io reader over TLS, in a process of its own: librdkafka's TLS (OpenSSL inside
    tensorflow-io's library) initialised in the test process crashed a later test's TensorFlow
    (a segmentation fault in tests/test_models.py when both ran in one pytest process)."""
    code = ("import json, sys; from susy_pipeline import kafka_io; "
            "a = json.loads(sys.argv[1]); "
            "values = [v.decode() if isinstance(v, bytes) else v for _, vs in kafka_io.tfio_batches("
            "a['bootstrap'], a['topic'], {int(p): tuple(r) for p, r in a['ranges'].items()}, "
            "configuration=a['settings'], timeout_s=60) for v in vs]; print(json.dumps(values))")
    args = json.dumps({"bootstrap": tls_broker["bootstrap"], "topic": topic, "settings": list(TFIO_TANSU_SETTINGS),
                       "ranges": {str(p): list(r) for p, r in ranges.items()}})
    env = {**os.environ, "KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": tls_broker["ca"]}
    out = subprocess.run([sys.executable, "-c", code, args], env=env, capture_output=True, text=True, timeout=180,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sample_values(rows: int) -> list[bytes]:
    import gzip
    with gzip.open(SAMPLE, "rb") as f:
        return [line.rstrip(b"\n").split(b",", 1)[1] for _, line in zip(range(rows), f)]


def test_a_certificate_that_does_not_verify_is_exit_2_naming_the_broker(tls_broker: dict[str, str],
                                                                          tmp_path: Path) -> None:
    security = KafkaSecurity.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL",
                                       "KAFKA_SSL_CA_FILE": tls_broker["other_ca"]})
    started = time.monotonic()
    with pytest.raises(BadInput, match=rf"Kafka broker {tls_broker['bootstrap']}: its TLS certificate does not verify"):
        kafka_io.ensure_topic(tls_broker["bootstrap"], "never", 1, security=security)
    assert time.monotonic() - started < 5, "at once, not after the clients' retries"

    env = {**os.environ, "KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": tls_broker["other_ca"],
           "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "susy_pipeline", "produce", "--data", str(SAMPLE), "--limit", "10",
                          "--bootstrap", tls_broker["bootstrap"], "--topic", "never", "--run-name", "r",
                          "--store", f"sqlite:///{tmp_path}/s.sqlite3"],
                         env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "certificate verify failed" in out.stderr or "does not verify" in out.stderr


@pytest.mark.parametrize("env, message", [
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL='TLS': expected one of"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"),
    ({"KAFKA_SASL_MECHANISM": "PLAIN"}, "needs KAFKA_SECURITY_PROTOCOL SASL_SSL or SASL_PLAINTEXT"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "GSSAPI", "KAFKA_SASL_USERNAME": "u",
      "KAFKA_SASL_PASSWORD": "p"}, "KAFKA_SASL_MECHANISM='GSSAPI'"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": "/nonexistent/ca.pem"}, "KAFKA_SSL_CA_FILE=/nonexistent"),
    ({"KAFKA_SSL_CA_FILE": __file__}, "need KAFKA_SECURITY_PROTOCOL SSL or SASL_SSL, not PLAINTEXT"),
])
def test_settings_that_cannot_work_are_bad_input_naming_the_variable(env, message) -> None:
    with pytest.raises(BadInput, match=message.replace("(", r"\(").replace("'", "'")):
        KafkaSecurity.from_env(env)


def test_sasl_scram_reaches_both_clients_and_the_password_no_log() -> None:
    security = KafkaSecurity.from_env({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "scram-sha-512",
                                       "KAFKA_SASL_USERNAME": "susy", "KAFKA_SASL_PASSWORD": "s3cret",
                                       "KAFKA_SSL_CA_FILE": __file__})
    assert security.kafka_python() == {"security_protocol": "SASL_SSL", "ssl_cafile": __file__,
                                       "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "susy",
                                       "sasl_plain_password": "s3cret"}
    assert security.librdkafka() == ["security.protocol=sasl_ssl", f"ssl.ca.location={__file__}",
                                     "sasl.mechanisms=SCRAM-SHA-512", "sasl.username=susy", "sasl.password=s3cret"]
    assert "s3cret" not in repr(security) and "s3cret" not in str(security.describe())
    # kafka-python takes these keywords (a wrong name would raise here, before any connection).
    from kafka import KafkaProducer
    assert {"security_protocol", "ssl_cafile", "sasl_mechanism", "sasl_plain_username",
            "sasl_plain_password"} <= set(KafkaProducer.DEFAULT_CONFIG)


def test_the_tfio_librdkafka_was_built_with_ssl_and_sasl() -> None:
    """librdkafka 1.5.0 inside tensorflow-io 0.37.1: its builtin.features name ssl and sasl_scram."""
    import importlib.util  # the library's bytes only: loading it here would start its OpenSSL too
    spec = importlib.util.find_spec("tensorflow_io")
    lib = next(Path(next(iter(spec.submodule_search_locations))).rglob("libtensorflow_io.so*"), None)
    if lib is None:
        pytest.skip("tensorflow-io's shared library not found")
    text = lib.read_bytes()
    assert b"sasl_scram" in text and b"ssl" in text


def test_a_mongodb_uri_with_tls_options_reaches_pymongo_intact(tmp_path: Path) -> None:
    """mongomock cannot do TLS and no mongod runs here: what is shown is that the URI's TLS options
    arrive in pymongo's client as written: TLS on, the CA file loaded (the client connects lazily,
    so nothing dials)."""
    from susy_pipeline import store as store_lib

    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a CA")
    ca, _ = make_ca(tmp_path, "mongo-ca")
    uri = f"mongodb://susy:pw@db.example:27017/bigdata?tls=true&tlsCAFile={ca}&authSource=admin"
    store = store_lib.open_store(uri)
    try:
        context = store._client.options.pool_options._ssl_context  # noqa: SLF001 - pymongo's parsed TLS
        assert context is not None, "TLS is on"
        subjects = [dict(x[0] for x in c["subject"]) for c in context.get_ca_certs()]
        assert {"commonName": "mongo-ca"} in subjects, "the CA file named in the URI is the one loaded"
    finally:
        store.close()
