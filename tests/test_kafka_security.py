"""Kafka over TLS and SASL for real, and the client security settings (susy_pipeline/kafka_security.py).

TLS: Debian's stunnel terminates TLS in front of a tansu broker (tansu 0.6.0's own TLS listener
did not serve TLS here), tansu advertising the stunnel port, with a CA and a server certificate
made in the test (the openssl command line). Both producer clients, the topic admin and the three
readers connect through it with KAFKA_SECURITY_PROTOCOL=SSL and the test CA; a CA that does not match
ends the command at once with exit 2 naming the broker and the cause.

SASL: tansu 0.6.0 with `--authentication` is a real SCRAM server (rsasl, built with SCRAM and
OAUTHBEARER: tansu-auth/src/lib.rs, Cargo.toml `rsasl ... features = [..., "scram-sha-2"]`) that
admits nobody: its storage engines in this build (memory, S3) keep no SCRAM credentials
(tansu-storage/src/dynostore.rs: `upsert_user_scram_credential` does nothing,
`user_scram_credential` answers None), so every login ends in the RFC 5802 server-error
`e=unknown-user`. That is a refused login for real, which is what the tests need: a refused
password and a mechanism the broker does not offer (PLAIN: tansu closes the connection) end the
command at once with exit 2, the broker and the cause, and the password in no output. A login
that succeeds cannot be shown here.
"""
from __future__ import annotations

import contextlib
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
from susy_pipeline.kafka_security import KafkaSecurity, KafkaUnavailable, check_broker, check_tfio_logging

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


def _stunnel() -> str:
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    if stunnel is None or shutil.which("openssl") is None:
        pytest.skip("needs Debian's stunnel4 and openssl (.ci/run installs stunnel4)")
    return stunnel


@contextlib.contextmanager
def tansu_behind_stunnel(folder: Path, bundle: Path | None, *tansu_args: str) -> Iterator[str]:
    """tansu on one loopback port; with a certificate `bundle`, stunnel terminating TLS on a second
    port that tansu advertises. Yields the bootstrap address clients use."""
    plain = free_port()
    tls = free_port() if bundle else plain
    processes = [subprocess.Popen([str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{plain}",
                                   "--advertised-listener-url", f"tcp://127.0.0.1:{tls}", *tansu_args],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)]
    if bundle:
        config = folder / f"stunnel-{tls}.conf"
        config.write_text(f"foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls}\n"
                          f"connect = 127.0.0.1:{plain}\ncert = {bundle}\n")
        processes.append(subprocess.Popen([_stunnel(), str(config)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.STDOUT))
    try:
        wait_for_port("127.0.0.1", plain, 30)
        wait_for_port("127.0.0.1", tls, 30)
        yield f"127.0.0.1:{tls}"
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(10)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    _stunnel()
    folder = tmp_path_factory.mktemp("kafka-tls")
    ca = make_ca(folder, "test-ca")
    other_ca, _ = make_ca(folder, "other-ca")
    return {"folder": folder, "ca": ca[0], "other_ca": other_ca, "bundle": make_server_cert(folder, ca)}


@pytest.fixture(scope="module")
def tls_broker(certificates: dict[str, Path]) -> Iterator[dict[str, str]]:
    with tansu_behind_stunnel(certificates["folder"], certificates["bundle"]) as bootstrap:
        yield {"bootstrap": bootstrap, "ca": str(certificates["ca"]), "other_ca": str(certificates["other_ca"])}


@pytest.fixture(scope="module")
def sasl_broker(certificates: dict[str, Path]) -> Iterator[dict[str, str]]:
    """tansu --authentication twice: plaintext (SASL_PLAINTEXT) and behind stunnel (SASL_SSL)."""
    with tansu_behind_stunnel(certificates["folder"], None, "--authentication") as plain, \
            tansu_behind_stunnel(certificates["folder"], certificates["bundle"], "--authentication") as tls:
        yield {"plain": plain, "tls": tls, "ca": str(certificates["ca"])}


@pytest.mark.parametrize("client", kafka_io.PRODUCER_CLIENTS)
def test_both_producers_and_the_three_readers_over_tls(tls_broker: dict[str, str], client: str) -> None:
    security = KafkaSecurity.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": tls_broker["ca"]})
    topic = f"tls-{client}-{time.monotonic_ns()}"
    production = kafka_io.produce(iter_batches(str(SAMPLE), limit=ROWS, keep_text=True), client=client,
                                  bootstrap=tls_broker["bootstrap"], topic=topic, partitions=2, security=security)
    assert production.rows == ROWS
    ranges = {int(p): tuple(r) for p, r in production.to_record()["partitions"].items()}
    expected = sorted(line.decode() for line in _sample_values(ROWS))
    for reader in ("kafka-python", "confluent"):
        values = [v for _, batch in kafka_io.READERS[reader](tls_broker["bootstrap"], topic, ranges, security=security)
                  for v in batch]
        assert sorted(v.decode() for v in values) == expected, reader
    assert sorted(_tfio_values(tls_broker, topic, ranges)) == expected


def test_the_broker_check_runs_once_per_bootstrap_and_settings(tls_broker: dict[str, str], monkeypatch) -> None:
    """A trainer opens its reader again every epoch; the TLS handshake (and SASL login) before the
    clients is made once per process for the same broker and settings."""
    import socket

    from susy_pipeline import kafka_security

    security = KafkaSecurity.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": tls_broker["ca"]})
    kafka_security._CHECKED.discard((tls_broker["bootstrap"], security))
    connections = []
    real = socket.create_connection
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: connections.append(a) or real(*a, **k))
    for _ in range(3):
        check_broker(tls_broker["bootstrap"], security)
    assert len(connections) == 1
    other = KafkaSecurity.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": tls_broker["other_ca"]})
    with pytest.raises(BadInput, match="does not verify"):  # other settings: checked, not taken from the cache
        check_broker(tls_broker["bootstrap"], other)
    assert len(connections) == 2


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


PASSWORD = "Pa55-never-printed"


def _sasl(protocol: str, mechanism: str, ca: str | None = None) -> dict[str, str]:
    env = {"KAFKA_SECURITY_PROTOCOL": protocol, "KAFKA_SASL_MECHANISM": mechanism,
           "KAFKA_SASL_USERNAME": "susy", "KAFKA_SASL_PASSWORD": PASSWORD}
    return {**env, "KAFKA_SSL_CA_FILE": ca} if ca else env


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("over", ["plain", "tls"])
def test_a_refused_login_is_exit_2_at_once_naming_the_broker_and_the_cause(sasl_broker, mechanism, over) -> None:
    """The topic admin, both producer clients and the readers check the login first."""
    protocol = "SASL_SSL" if over == "tls" else "SASL_PLAINTEXT"
    security = KafkaSecurity.from_env(_sasl(protocol, mechanism, sasl_broker["ca"] if over == "tls" else None))
    bootstrap = sasl_broker[over]
    expected = (rf"Kafka broker {bootstrap}: refused SASL {mechanism} login of user 'susy' "
                r"\(KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD\): unknown-user")
    started = time.monotonic()
    with pytest.raises(BadInput, match=expected):
        kafka_io.ensure_topic(bootstrap, "never", 1, security=security)
    for reader in ("kafka-python", "confluent"):
        with pytest.raises(BadInput, match=expected):
            next(kafka_io.READERS[reader](bootstrap, "never", {0: (0, 1)}, security=security))
    with pytest.raises(BadInput, match=expected):  # the confluent producer, made before the topic admin
        kafka_io.produce(iter([]), bootstrap=bootstrap, topic="never", client="confluent", security=security)
    assert time.monotonic() - started < 5, "at once, not after the clients' retries"


def test_the_tfio_reader_refuses_a_log_level_that_prints_the_password() -> None:
    """Checked on a mapping: setting os.environ while TensorFlow's threads read it can crash the
    process (setenv is not thread-safe), so no test here changes the environment in process. The
    tfio reader's login check runs in the train command test below."""
    security = KafkaSecurity.from_env(_sasl("SASL_PLAINTEXT", "SCRAM-SHA-512"))
    for level in ("", "0"):
        with pytest.raises(BadInput, match="TF_CPP_MIN_LOG_LEVEL must be 1 or more"):
            check_tfio_logging(security, {"TF_CPP_MIN_LOG_LEVEL": level})
    check_tfio_logging(security, {"TF_CPP_MIN_LOG_LEVEL": "1"})
    check_tfio_logging(KafkaSecurity.from_env({}), {})  # no password: nothing to hide


def test_a_mechanism_the_broker_does_not_offer_is_exit_2(sasl_broker, kafka_broker) -> None:
    # tansu --authentication closes the connection on PLAIN (its rsasl has no PLAIN server).
    security = KafkaSecurity.from_env(_sasl("SASL_PLAINTEXT", "PLAIN"))
    with pytest.raises(BadInput, match=rf"Kafka broker {sasl_broker['plain']}: closed the connection during "
                                       r"the SASL PLAIN login, as a broker does when it does not offer PLAIN"):
        kafka_io.ensure_topic(sasl_broker["plain"], "never", 1, security=security)
    # tansu without --authentication answers UNSUPPORTED_SASL_MECHANISM, as Apache Kafka does.
    with pytest.raises(BadInput, match=rf"Kafka broker {kafka_broker}: does not offer SASL mechanism "
                                       r"SCRAM-SHA-256 \(KAFKA_SASL_MECHANISM\)"):
        kafka_io.ensure_topic(kafka_broker, "never", 1,
                              security=KafkaSecurity.from_env(_sasl("SASL_PLAINTEXT", "SCRAM-SHA-256")))


def test_a_tls_client_against_a_plaintext_listener_is_exit_3_naming_it(kafka_broker) -> None:
    """tansu waits for the rest of the 'frame' a TLS ClientHello announces, so this is a timeout
    (Apache Kafka closes the connection instead: a TLS handshake failure, exit 2)."""
    security = KafkaSecurity.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL"})
    with pytest.raises(KafkaUnavailable, match=rf"Kafka broker {kafka_broker}: no answer to a TLS handshake "
                                               r"in 2 s \(is it a TLS listener\?\)"):
        check_broker(kafka_broker, security, timeout_s=2)


def test_produce_and_train_commands_end_with_exit_2_and_never_print_the_password(sasl_broker, tmp_path) -> None:
    """The commands as a Job runs them: the password is in the environment, and in no output."""
    store_uri = f"sqlite:///{tmp_path}/s.sqlite3"
    from susy_pipeline.store import open_store
    with open_store(store_uri) as store:  # a production record for train to read
        store.put_production("r", {"topic": "never", "partitions": {"0": [0, 10]}, "rows": 10})
    env = {**os.environ, **_sasl("SASL_SSL", "SCRAM-SHA-512", sasl_broker["ca"]), "HOME": str(tmp_path)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the command's own default applies
    commands = {
        "produce": ["produce", "--data", str(SAMPLE), "--limit", "10", "--topic", "never"],
        "produce kafka-python": ["produce", "--client", "kafka-python", "--data", str(SAMPLE), "--limit", "10",
                                 "--topic", "never"],
        "train tfio": ["train", "--reader", "tfio", "--librdkafka", "api.version.request=false",
                       "--librdkafka", "broker.version.fallback=0.9.0"],
        "train kafka-python": ["train", "--reader", "kafka-python"],
        "train confluent": ["train", "--reader", "confluent"],
    }
    for what, args in commands.items():
        out = subprocess.run([sys.executable, "-m", "susy_pipeline", *args, "--bootstrap", sasl_broker["tls"],
                              "--run-name", "r", "--store", store_uri],
                             env=env, capture_output=True, text=True, timeout=180, cwd=ROOT)
        assert out.returncode == 2, (what, out.stderr[-2000:])
        assert f"Kafka broker {sasl_broker['tls']}: refused SASL SCRAM-SHA-512 login" in out.stderr, what
        assert PASSWORD not in out.stderr + out.stdout, what


def test_a_model_trained_over_tls_records_the_connection_without_secrets(tls_broker, tmp_path) -> None:
    """lineage.security: protocol, mechanism, user, CA file; never the password."""
    store_uri = f"sqlite:///{tmp_path}/s.sqlite3"
    env = {**os.environ, "KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": tls_broker["ca"],
           "HOME": str(tmp_path)}
    common = ["--bootstrap", tls_broker["bootstrap"], "--run-name", "tls", "--store", store_uri,
              "--topic", f"tls-train-{time.monotonic_ns()}"]
    for args in (["produce", "--data", str(SAMPLE), "--limit", "300"],
                 ["train", "--reader", "kafka-python", "--recipe", "seed", "--epochs", "1"]):
        out = subprocess.run([sys.executable, "-m", "susy_pipeline", *args, *common], env=env,
                             capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-2000:]
    lineage = json.loads(out.stdout.strip().splitlines()[-1])["lineage"]
    assert lineage["security"] == {"protocol": "SSL", "mechanism": None, "username": None,
                                   "ca_file": tls_broker["ca"], "client_certificate": False}
