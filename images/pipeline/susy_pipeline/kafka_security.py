"""How every Kafka client of the pipeline connects: TLS, SASL, or neither. One configuration, read
once from the environment (a Kubernetes Job takes it from a Secret through `envFrom`; never from
the CR's spec), translated for kafka-python (its producer, the topic admin, the kafka-python
reader) and for librdkafka (confluent-kafka's producer and the confluent reader, librdkafka 2.16;
the tensorflow-io reader, librdkafka 1.5.0).

| variable | meaning | kafka-python | librdkafka |
|---|---|---|---|
| KAFKA_SECURITY_PROTOCOL | PLAINTEXT (default), SSL, SASL_PLAINTEXT, SASL_SSL | security_protocol | security.protocol |
| KAFKA_SASL_MECHANISM | PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 | sasl_mechanism | sasl.mechanisms |
| KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD | the SASL credentials | sasl_plain_username, sasl_plain_password | sasl.username, sasl.password |
| KAFKA_SSL_CA_FILE | the CA bundle that signs the brokers' certificates (default: the system's) | ssl_cafile | ssl.ca.location |
| KAFKA_SSL_CERT_FILE, KAFKA_SSL_KEY_FILE | a client certificate and key (mutual TLS) | ssl_certfile, ssl_keyfile | ssl.certificate.location, ssl.key.location |

The librdkafka inside tensorflow-io 0.37.1 (1.5.0) was built with ssl, sasl_plain, sasl_scram and
sasl_oauthbearer (its `builtin.features`), as is the librdkafka 2.16.0 in confluent-kafka's wheel, so
every client takes the same settings. A setting that
cannot work (a SASL mechanism without credentials, a file that does not exist, an unknown
protocol) is BadInput (exit 2) naming the variable. The password is kept out of every repr, log
line and result (`describe`).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, Callable, TypeVar

from .errors import BadInput, Unavailable
from .redaction import echo

T = TypeVar("T")


class KafkaUnavailable(Unavailable, RuntimeError):
    """The broker could not be reached or refused the work (exit 3); kafka_io raises it too."""


PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclasses.dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "KafkaSecurity":
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            return (env.get(name) or "").strip() or None

        protocol = (get("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").upper()
        if protocol not in PROTOCOLS:
            raise BadInput(f"KAFKA_SECURITY_PROTOCOL={echo(protocol)}: expected one of {', '.join(PROTOCOLS)}")
        sasl = protocol.startswith("SASL_")
        mechanism = get("KAFKA_SASL_MECHANISM")
        mechanism = mechanism.upper() if mechanism else ("PLAIN" if sasl else None)
        if mechanism is not None and mechanism not in MECHANISMS:
            raise BadInput(f"KAFKA_SASL_MECHANISM={echo(mechanism)}: expected one of {', '.join(MECHANISMS)}")
        if mechanism is not None and not sasl:
            raise BadInput(f"KAFKA_SASL_MECHANISM={mechanism} needs KAFKA_SECURITY_PROTOCOL SASL_SSL or "
                           f"SASL_PLAINTEXT, not {protocol}")
        username, password = get("KAFKA_SASL_USERNAME"), get("KAFKA_SASL_PASSWORD")
        if sasl and not (username and password):
            missing = [n for n, v in (("KAFKA_SASL_USERNAME", username), ("KAFKA_SASL_PASSWORD", password)) if not v]
            raise BadInput(f"KAFKA_SECURITY_PROTOCOL={protocol} needs {' and '.join(missing)}")
        files = {name: get(name) for name in ("KAFKA_SSL_CA_FILE", "KAFKA_SSL_CERT_FILE", "KAFKA_SSL_KEY_FILE")}
        for name, path in files.items():
            if path is not None and not os.path.isfile(path):
                raise BadInput(f"{name}={path}: no such file")
        if bool(files["KAFKA_SSL_CERT_FILE"]) != bool(files["KAFKA_SSL_KEY_FILE"]):
            raise BadInput("KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE go together (mutual TLS)")
        if any(files.values()) and not protocol.endswith("SSL"):
            raise BadInput(f"KAFKA_SSL_* files need KAFKA_SECURITY_PROTOCOL SSL or SASL_SSL, not {protocol}")
        return cls(protocol, mechanism, username, password, files["KAFKA_SSL_CA_FILE"],
                   files["KAFKA_SSL_CERT_FILE"], files["KAFKA_SSL_KEY_FILE"])

    @property
    def tls(self) -> bool:
        return self.protocol.endswith("SSL")

    def kafka_python(self) -> dict[str, Any]:
        """Keyword arguments for KafkaProducer, KafkaConsumer and KafkaAdminClient."""
        settings: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            # kafka-python checks the broker's hostname against its certificate by default.
            settings.update({k: v for k, v in (("ssl_cafile", self.ca_file), ("ssl_certfile", self.cert_file),
                                               ("ssl_keyfile", self.key_file)) if v})
        if self.mechanism:
            settings.update(sasl_mechanism=self.mechanism, sasl_plain_username=self.username,
                            sasl_plain_password=self.password)
        return settings

    def librdkafka(self) -> list[str]:
        """`key=value` settings for librdkafka (tensorflow-io's `configuration`)."""
        settings = [f"security.protocol={self.protocol.lower()}"]
        for key, value in (("ssl.ca.location", self.ca_file), ("ssl.certificate.location", self.cert_file),
                           ("ssl.key.location", self.key_file)):
            if value and self.tls:
                settings.append(f"{key}={value}")
        if self.mechanism:
            settings += [f"sasl.mechanisms={self.mechanism}", f"sasl.username={self.username}",
                         f"sasl.password={self.password}"]
        return settings

    def describe(self) -> dict[str, Any]:
        """What may be logged or stored (lineage): everything but the password."""
        return {"protocol": self.protocol, "mechanism": self.mechanism, "username": self.username,
                "ca_file": self.ca_file, "client_certificate": bool(self.cert_file)}


def connect_kafka_python(bootstrap: str, make: Callable[[], T]) -> T:
    """A kafka-python client (its constructor connects to the bootstrap brokers). Settings the
    client refuses are bad input (exit 2: retrying cannot fix them), not an unreachable broker.

    Here, not in kafka_io, because the operator calls it (kafka_offsets.log_offsets) and its image
    has neither pyarrow nor numpy's readers: this module imports only the standard library."""
    from kafka.errors import KafkaConfigurationError, KafkaError

    try:
        return make()
    except KafkaConfigurationError as err:
        raise BadInput(f"Kafka client settings refused: {err}") from None
    except KafkaError as err:
        raise KafkaUnavailable(f"no Kafka broker answers at {bootstrap}") from err


def check_tfio_logging(security: KafkaSecurity, env: Mapping[str, str] | None = None) -> None:
    """tensorflow-io logs every librdkafka setting at INFO, the password too (seen here:
    "I tensorflow_io/core/kernels/kafka_kernels.cc:107] Kafka configuration: sasl.password=...").
    The commands set TF_CPP_MIN_LOG_LEVEL=2 before TensorFlow loads (cli.py), the image 1; a
    debugging 0 with a password set is refused rather than printed."""
    env = os.environ if env is None else env
    if security.password and int(env.get("TF_CPP_MIN_LOG_LEVEL") or 0) < 1:
        raise BadInput("TF_CPP_MIN_LOG_LEVEL must be 1 or more with KAFKA_SASL_PASSWORD set: at 0 "
                       "tensorflow-io logs every librdkafka setting, the password included")


# (bootstrap, settings) pairs that `check_broker` passed once in this process (TLS handshake and
# SASL login), so a trainer's epochs (each one opens its reader again) check once.
_CHECKED: set[tuple[str, KafkaSecurity]] = set()

# Kafka protocol error codes the SASL check names (clients/src/main/java/org/apache/kafka/common/
# protocol/Errors.java): UNSUPPORTED_SASL_MECHANISM 33, ILLEGAL_SASL_STATE 34,
# SASL_AUTHENTICATION_FAILED 58.
_UNSUPPORTED_SASL_MECHANISM, _ILLEGAL_SASL_STATE, _SASL_AUTHENTICATION_FAILED = 33, 34, 58


def check_broker(bootstrap: str, security: KafkaSecurity, timeout_s: float = 10.0) -> None:
    """A TLS handshake and a SASL login with the first bootstrap broker that answers, before any
    Kafka client starts. Neither client says why it cannot connect: kafka-python retries a failed
    login until its bootstrap timeout (3.0.12 even fails on a SCRAM server-error, `KeyError 'v'`,
    net/sasl/scram.py process_server_final_message), and librdkafka 1.5.0 inside tensorflow-io
    only logs it while the read hangs. So a certificate that does not verify, a mechanism the
    broker does not offer, or credentials it refuses end the command at once with the broker and
    the cause (BadInput, exit 2: retrying cannot fix them). A broker that does not answer is left
    to the clients' own bounded retries (exit 3)."""
    import socket
    import ssl

    if not (security.tls or security.mechanism) or (bootstrap, security) in _CHECKED:
        return
    context = None
    if security.tls:
        context = ssl.create_default_context(cafile=security.ca_file)
        if security.cert_file:
            context.load_cert_chain(security.cert_file, security.key_file)
    for server in bootstrap.split(","):
        server = server.strip()
        host, _, port = server.rpartition(":")
        host = host.strip("[]")
        try:
            raw = socket.create_connection((host, int(port)), timeout=timeout_s)
        except OSError:
            continue  # not answering: the next one, or the clients' retries
        with raw:
            sock = raw
            if context is not None:
                try:
                    sock = context.wrap_socket(raw, server_hostname=host)
                except ssl.SSLCertVerificationError as err:
                    raise BadInput(f"Kafka broker {server}: its TLS certificate does not verify against "
                                   f"{security.ca_file or 'the system CA bundle'}: {err.verify_message}") from None
                except ssl.SSLError as err:
                    raise BadInput(f"Kafka broker {server}: TLS handshake failed: {err.reason or err} "
                                   f"(is it a TLS listener?)") from None
                except socket.timeout:
                    # Apache Kafka closes a plaintext connection whose first "frame" (a TLS
                    # ClientHello) is too large, which is the SSLError above; a server that
                    # just waits is not told apart from a hung one.
                    raise KafkaUnavailable(f"Kafka broker {server}: no answer to a TLS handshake in "
                                           f"{timeout_s:.0f} s (is it a TLS listener?)") from None
                except OSError:
                    continue
            if security.mechanism:
                _sasl_login(sock, server, security)
        _CHECKED.add((bootstrap, security))
        return


def _sasl_login(sock: Any, server: str, security: KafkaSecurity) -> None:
    """SaslHandshake v1, then SaslAuthenticate v0 until the mechanism is done, on an open socket.
    The frames are Kafka's non-flexible request header v1 and response header v0 (the protocol
    guide's "SASL Authentication Sequence", https://kafka.apache.org/protocol#sasl_handshake);
    SaslHandshake v1 is the one Kafka 1.0 to 4.x all take (KIP-896 removed v0 in 4.0)."""
    import socket
    import struct

    from kafka.net.sasl.scram import ScramClient

    mechanism = security.mechanism
    correlation = 0

    def call(api_key: int, body: bytes) -> bytes:
        nonlocal correlation
        correlation += 1
        client = b"susy-preflight"
        header = struct.pack(">hhih", api_key, 1 if api_key == 17 else 0, correlation, len(client)) + client
        frame = header + body
        try:
            sock.sendall(struct.pack(">i", len(frame)) + frame)
            size = struct.unpack(">i", _read(sock, 4))[0]
            reply = _read(sock, size)
        except socket.timeout:
            raise KafkaUnavailable(f"Kafka broker {server}: no answer to the SASL {mechanism} login") from None
        except (ConnectionError, EOFError):
            raise BadInput(f"Kafka broker {server}: closed the connection during the SASL {mechanism} "
                           f"login, as a broker does when it does not offer {mechanism} on this "
                           f"listener (KAFKA_SASL_MECHANISM) or the listener is not SASL "
                           f"(KAFKA_SECURITY_PROTOCOL={security.protocol})") from None
        return reply[4:]  # the correlation id

    def string(text: str) -> bytes:
        data = text.encode()
        return struct.pack(">h", len(data)) + data

    reply = call(17, string(mechanism))
    error, count = struct.unpack(">hi", reply[:6])
    offered, rest = [], reply[6:]
    for _ in range(max(count, 0)):
        (n,), rest = struct.unpack(">h", rest[:2]), rest[2:]
        offered.append(rest[:n].decode(errors="replace"))
        rest = rest[n:]
    if error == _UNSUPPORTED_SASL_MECHANISM or (error == 0 and mechanism not in offered):
        # Kafka lists the mechanisms it does offer; tansu echoes the one asked for.
        others = [m for m in offered if m != mechanism]
        raise BadInput(f"Kafka broker {server}: does not offer SASL mechanism {mechanism} (KAFKA_SASL_MECHANISM)"
                       + (f"; it offers {', '.join(others)}" if others else ""))
    if error == _ILLEGAL_SASL_STATE:
        raise BadInput(f"Kafka broker {server}: this listener does not take SASL "
                       f"(KAFKA_SECURITY_PROTOCOL={security.protocol})")
    if error:
        raise BadInput(f"Kafka broker {server}: SASL handshake for {mechanism} failed with Kafka error {error}")

    def authenticate(token: bytes) -> bytes:
        reply = call(36, struct.pack(">i", len(token)) + token)
        (error, n), rest = struct.unpack(">hh", reply[:4]), reply[4:]
        message = rest[:n].decode(errors="replace") if n >= 0 else ""
        rest = rest[max(n, 0):]
        (size,), rest = struct.unpack(">i", rest[:4]), rest[4:]
        if error:
            raise _refused(server, security, message or f"Kafka error {error}")
        return rest[:max(size, 0)]

    if mechanism == "PLAIN":
        authenticate(f"\0{security.username}\0{security.password}".encode())
        return
    scram = ScramClient(security.username, security.password, mechanism)
    first = authenticate(scram.first_message())
    if first.startswith(b"e="):
        raise _refused(server, security, first[2:].decode(errors="replace"))
    scram.process_server_first_message(first)
    final = authenticate(scram.final_message())
    # RFC 5802 section 7: a server-final-message is either "e=<error>" or "v=<signature>". tansu
    # answers a failed login so, with Kafka error code 0.
    if final.startswith(b"e="):
        raise _refused(server, security, final[2:].decode(errors="replace"))
    try:
        scram.process_server_final_message(final)
    except (KeyError, ValueError):
        raise BadInput(f"Kafka broker {server}: its SCRAM signature does not match: it does not hold "
                       f"this user's credentials (or something between rewrote the exchange)") from None


def _refused(server: str, security: KafkaSecurity, cause: str) -> BadInput:
    # The cause is the broker's own text; it never holds the password, and nor does this.
    return BadInput(f"Kafka broker {server}: refused SASL {security.mechanism} login of user "
                    f"{echo(security.username)} (KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD): {cause}")


def _read(sock: Any, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data
