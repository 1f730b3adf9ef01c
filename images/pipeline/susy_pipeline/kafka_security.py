"""How every Kafka client of the pipeline connects: TLS, SASL, or neither. One configuration, read
once from the environment (a Kubernetes Job takes it from a Secret through `envFrom`; never from
the CR's spec), translated for kafka-python (the producer, the topic admin, the kafka-python
reader) and for librdkafka (the tensorflow-io reader).

| variable | meaning | kafka-python | librdkafka |
|---|---|---|---|
| KAFKA_SECURITY_PROTOCOL | PLAINTEXT (default), SSL, SASL_PLAINTEXT, SASL_SSL | security_protocol | security.protocol |
| KAFKA_SASL_MECHANISM | PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 | sasl_mechanism | sasl.mechanisms |
| KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD | the SASL credentials | sasl_plain_username, sasl_plain_password | sasl.username, sasl.password |
| KAFKA_SSL_CA_FILE | the CA bundle that signs the brokers' certificates (default: the system's) | ssl_cafile | ssl.ca.location |
| KAFKA_SSL_CERT_FILE, KAFKA_SSL_KEY_FILE | a client certificate and key (mutual TLS) | ssl_certfile, ssl_keyfile | ssl.certificate.location, ssl.key.location |

The librdkafka inside tensorflow-io 0.37.1 (1.5.0) was built with ssl, sasl_plain, sasl_scram and
sasl_oauthbearer (its `builtin.features`), so both readers take the same settings. A setting that
cannot work (a SASL mechanism without credentials, a file that does not exist, an unknown
protocol) is BadInput (exit 2) naming the variable. The password is kept out of every repr, log
line and result (`describe`).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from .errors import BadInput

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
            raise BadInput(f"KAFKA_SECURITY_PROTOCOL={protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        sasl = protocol.startswith("SASL_")
        mechanism = get("KAFKA_SASL_MECHANISM")
        mechanism = mechanism.upper() if mechanism else ("PLAIN" if sasl else None)
        if mechanism is not None and mechanism not in MECHANISMS:
            raise BadInput(f"KAFKA_SASL_MECHANISM={mechanism!r}: expected one of {', '.join(MECHANISMS)}")
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


def check_tls(bootstrap: str, security: KafkaSecurity, timeout_s: float = 10.0) -> None:
    """A TLS handshake with the first bootstrap broker that answers, before any Kafka client starts,
    so that a certificate that does not verify ends the command at once with the broker and the
    cause (BadInput, exit 2: retrying cannot fix it) instead of the clients' silent retries and a
    timeout. Brokers that do not answer are left to the clients' own bounded retries (exit 3)."""
    import socket
    import ssl

    if not security.tls:
        return
    context = ssl.create_default_context(cafile=security.ca_file)
    if security.cert_file:
        context.load_cert_chain(security.cert_file, security.key_file)
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        host = host.strip("[]")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout_s) as raw, \
                    context.wrap_socket(raw, server_hostname=host):
                return
        except ssl.SSLCertVerificationError as err:
            raise BadInput(f"Kafka broker {server}: its TLS certificate does not verify against "
                           f"{security.ca_file or 'the system CA bundle'}: {err.verify_message}") from None
        except ssl.SSLError as err:
            raise BadInput(f"Kafka broker {server}: TLS handshake failed: {err.reason or err}") from None
        except OSError:
            continue  # not answering: the next one, or the clients' retries
