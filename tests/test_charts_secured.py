"""The platform chart, secured (issue 17): TLS for its MongoDB, TLS and SASL/SCRAM in KRaft mode.

No mongod, Kafka broker or cluster runs here. What is real: `helm template`/`helm lint` (and, through
tests/test_charts.py, strict Kubernetes schema validation of every ci/*-values.yaml, these included);
the containers' shell steps run by bash with stub Kafka tools; certificates made in the test (as a
cert-manager Certificate would hold them) put through those steps, then loaded by OpenSSL and used in
a TLS handshake that verifies the chain and the host name the URI names; the URI parsed by pymongo.
Kafka's own parsing is followed from its source where it cannot run: the image's env-to-property
rule (KafkaDockerWrapper.getServerConfigsFromEnv) and PemParser's pattern, each cited below.
"""
from __future__ import annotations

import base64
import datetime
import re
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from test_charts import NAMESPACE, OPERATOR, PLATFORM, _kafka, _properties, by_kind, containers, helm, render  # noqa: F401

SECURED = PLATFORM / "ci" / "secured-values.yaml"
SECURED_KRAFT = PLATFORM / "ci" / "secured-kraft-values.yaml"
MONGO_HOST = f"susy-platform-mongodb.{NAMESPACE}.svc.cluster.local"
# Where the KRaft init container writes the keystore and the broker reads it (ssl.keystore.location).
KEYSTORE = "/etc/kafka/keystore/keystore.pem"


# ---------------------------------------------------------------------------------------------
# certificates, as a cert-manager Certificate's Secret holds them (tls.crt, tls.key, ca.crt)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def issue(folder: Path, dns_names: list[str], *, pkcs8: bool = True) -> Path:
    """A CA and a server certificate it signs for `dns_names`, written as tls.crt, tls.key (PKCS#8,
    cert-manager's privateKey.encoding: PKCS8; else PKCS#1, its default) and ca.crt in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = _key(), _key()
    ca = (x509.CertificateBuilder().subject_name(_name("susy-test-ca")).issuer_name(_name("susy-test-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(_name(dns_names[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (folder / "tls.crt").write_bytes(leaf.public_bytes(pem))
    (folder / "ca.crt").write_bytes(ca.public_bytes(pem))
    key_format = serialization.PrivateFormat.PKCS8 if pkcs8 else serialization.PrivateFormat.TraditionalOpenSSL
    (folder / "tls.key").write_bytes(key.private_bytes(pem, key_format, serialization.NoEncryption()))
    return folder


def handshake(server_pem: Path, ca_file: Path, host: str) -> str:
    """A TLS handshake on loopback: the server loads certificate and key from `server_pem` (OpenSSL's
    certificate-chain file, then its private key, from the same file); the client verifies the chain
    against `ca_file` and the certificate against `host`. Returns the negotiated protocol."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(server_pem))
    client_ctx = ssl.create_default_context(cafile=str(ca_file))
    listener = socket.create_server(("127.0.0.1", 0))
    errors: list[BaseException] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as error:
            errors.append(error)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=10) as raw, \
                client_ctx.wrap_socket(raw, server_hostname=host) as tls:
            assert tls.recv(2) == b"ok"
            version = tls.version()
    finally:
        thread.join(10)
        listener.close()
    assert not errors, errors
    return version or ""


def _run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=60)


def _substitute(script: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in script, old
        script = script.replace(old, new)
    return script


def _stub(folder: Path, name: str) -> Path:
    """An executable that writes its arguments, one a line, to folder/<name>.args."""
    folder.mkdir(parents=True, exist_ok=True)
    stub = folder / name
    stub.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > "{folder}/{name}.args"\n')
    stub.chmod(0o755)
    return stub


# ---------------------------------------------------------------------------------------------
# MongoDB


def _mongo(objs: list[dict]) -> tuple[dict, dict]:
    (sts,) = [o for o in by_kind(objs, "StatefulSet") if o["metadata"]["name"].endswith("-mongodb")]
    return sts, sts["spec"]["template"]["spec"]["containers"][0]


def _secret_uri(objs: list[dict]) -> str:
    (secret,) = by_kind(objs, "Secret")
    return base64.b64decode(secret["data"]["uri"]).decode()


def test_mongodb_without_tls_is_as_before(helm: str) -> None:
    objs = render(helm, PLATFORM)
    sts, mongod = _mongo(objs)
    assert "initContainers" not in sts["spec"]["template"]["spec"]
    assert not [a for a in mongod["args"] if a.startswith("--tls")]
    assert "--tls" not in mongod["readinessProbe"]["exec"]["command"]
    assert _secret_uri(objs).endswith("/bigdata?authSource=admin")


def test_mongod_requires_tls_with_the_certificate_from_the_secret(helm: str) -> None:
    """mongod --tlsMode requireTLS, its certificate and key in one PEM file (--tlsCertificateKeyFile) on a
    memory-backed emptyDir the init container fills from the Secret, the CA from the Secret's ca.crt,
    and clients without a certificate of their own let in (the pipeline presents none)."""
    sts, mongod = _mongo(render(helm, PLATFORM, SECURED))
    args = mongod["args"]
    flags = dict(zip(args, args[1:]))
    assert flags["--tlsMode"] == "requireTLS"
    assert flags["--tlsCertificateKeyFile"] == "/etc/mongodb/tls/server.pem"
    assert flags["--tlsCAFile"] == "/etc/mongodb/tls/ca.crt"
    assert "--tlsAllowConnectionsWithoutCertificates" in args
    # The image's entrypoint recognises the key file by this exact flag: its temporary init mongod then
    # runs with --tlsMode allowTLS, so that its plaintext mongosh can create the users
    # (docker-library/mongo 8.0/docker-entrypoint.sh, _mongod_hack_have_arg '--tlsCertificateKeyFile').
    assert args[0] == "mongod" and args.count("--tlsCertificateKeyFile") == 1
    spec = sts["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    assert init["name"] == "tls-pem" and init["image"] == mongod["image"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["tls-secret"]["secret"]["secretName"] == "susy-platform-mongodb-tls"
    assert volumes["tls"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Mi"}
    init_mounts = {m["name"]: m for m in init["volumeMounts"]}
    assert init_mounts["tls-secret"] == {"name": "tls-secret", "mountPath": "/etc/mongodb/tls-secret", "readOnly": True}
    assert init_mounts["tls"]["mountPath"] == "/etc/mongodb/tls"
    mounts = {m["name"]: m for m in mongod["volumeMounts"]}
    assert mounts["tls"] == {"name": "tls", "mountPath": "/etc/mongodb/tls", "readOnly": True}
    assert "tls-secret" not in mounts, "mongod reads the PEM file, not the Secret"


def test_mongodb_readiness_probe_speaks_tls(helm: str) -> None:
    _, mongod = _mongo(render(helm, PLATFORM, SECURED))
    command = mongod["readinessProbe"]["exec"]["command"]
    assert command[0] == "mongosh"
    assert command[command.index("--tlsCAFile") + 1] == "/etc/mongodb/tls/ca.crt"
    assert {"--tls", "--tlsAllowInvalidHostnames"} <= set(command)
    assert command[command.index("--port") + 1] == "27017"
    assert mongod["livenessProbe"] == _mongo(render(helm, PLATFORM))[1]["livenessProbe"], "a TCP check either way"


def _pem_step(helm: str, tmp_path: Path) -> tuple[str, Path, Path]:
    sts, _ = _mongo(render(helm, PLATFORM, SECURED))
    (init,) = sts["spec"]["template"]["spec"]["initContainers"]
    assert init["command"][:2] == ["bash", "-c"]
    secret, out = tmp_path / "secret", tmp_path / "pem"
    out.mkdir()
    script = _substitute(init["command"][2], {"src=/etc/mongodb/tls-secret\n": f"src={secret}\n",
                                              "out=/etc/mongodb/tls\n": f"out={out}\n"})
    return script, secret, out


@pytest.mark.parametrize("pkcs8", [False, True], ids=["pkcs1-key", "pkcs8-key"])
def test_mongodb_pem_step_makes_a_key_file_that_serves_tls_for_the_uri_host(helm: str, tmp_path: Path,
                                                                             pkcs8: bool) -> None:
    """The init container's step, run on a certificate for the name in the URI: server.pem holds the
    chain, then the key (mongod's _setupPEM reads SSL_CTX_use_certificate_chain_file, then the key, from
    it: mongodb/mongo src/mongo/util/net/ssl_manager_openssl.cpp); OpenSSL loads it the same way and
    serves a handshake that a client trusting only ca.crt accepts for the URI's host."""
    script, secret, out = _pem_step(helm, tmp_path)
    issue(secret, [MONGO_HOST, f"susy-platform-mongodb-0.{MONGO_HOST}"], pkcs8=pkcs8)
    # cert-manager ends its PEM with a newline; one that does not must not run into the key.
    (secret / "tls.crt").write_text((secret / "tls.crt").read_text().rstrip("\n"))
    proc = _run(script, {})
    assert proc.returncode == 0, proc.stderr
    pem = (out / "server.pem").read_text()
    assert pem.index("BEGIN CERTIFICATE") < pem.index("PRIVATE KEY-----")
    assert "-----END CERTIFICATE----------" not in pem
    assert (out / "server.pem").stat().st_mode & 0o077 == 0, "the key file is the owner's only"
    assert (out / "ca.crt").read_bytes() == (secret / "ca.crt").read_bytes()
    uri_host = _secret_uri(render(helm, PLATFORM, SECURED)).split("@", 1)[1].split(":", 1)[0]
    assert uri_host == MONGO_HOST
    assert handshake(out / "server.pem", out / "ca.crt", uri_host).startswith("TLS")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(out / "server.pem", out / "ca.crt", "another-host.example")


@pytest.mark.parametrize("missing, message", [
    ("ca.crt", "has no ca.crt"), ("tls.key", "has no tls.key"),
])
def test_mongodb_pem_step_names_what_the_secret_lacks(helm: str, tmp_path: Path, missing: str, message: str) -> None:
    script, secret, out = _pem_step(helm, tmp_path)
    issue(secret, [MONGO_HOST])
    (secret / missing).unlink()
    proc = _run(script, {})
    assert proc.returncode == 1
    assert f"the Secret susy-platform-mongodb-tls (mongodb.tls.secretName) {message}" in proc.stderr
    assert not (out / "server.pem").exists()


def test_mongodb_uri_asks_for_tls_with_the_ca_where_the_operator_mounts_it(helm: str, tmp_path: Path) -> None:
    """The generated Secret's URI: tls=true and tlsCAFile at the operator chart's store.caSecretName
    mount (builders.STORE_CA_PATH in every Job; the operator's own Deployment), as pymongo reads it. pymongo
    opens the CA file while it parses the URI, so a pod without the mount fails at once, naming the option."""
    from pymongo import MongoClient
    from pymongo.uri_parser import parse_uri
    from susy_operator import builders

    uri = _secret_uri(render(helm, PLATFORM, SECURED))
    ca_file = f"{builders.STORE_CA_PATH}/ca.crt"
    raw = parse_uri(uri, validate=False)
    assert raw["options"]["tls"] == "true" and raw["options"]["tlsCAFile"] == ca_file
    assert raw["options"]["authSource"] == "admin"
    assert raw["nodelist"] == [(MONGO_HOST, 27017)] and raw["database"] == "bigdata"
    with pytest.raises(FileNotFoundError, match="The tlscafile file is not readable"):
        parse_uri(uri)
    # With the CA where the pod has it (a folder of this test standing in for the mount), pymongo's
    # client turns TLS on with that CA loaded; it connects lazily, so nothing dials.
    issue(tmp_path / "store-ca", [MONGO_HOST])
    mounted = uri.replace(builders.STORE_CA_PATH, str(tmp_path / "store-ca"))
    assert parse_uri(mounted)["options"]["tls"] is True
    client = MongoClient(mounted, connect=False)
    try:
        context = client.options.pool_options._ssl_context  # noqa: SLF001 - pymongo's parsed TLS
        assert context is not None and context.check_hostname
        subjects = [dict(x[0] for x in c["subject"]) for c in context.get_ca_certs()]
        assert subjects == [{"commonName": "susy-test-ca"}]
    finally:
        client.close()
    (dep,) = by_kind(render(helm, OPERATOR, None, "store.caSecretName=susy-mongodb-ca"), "Deployment")
    (operator,) = dep["spec"]["template"]["spec"]["containers"]
    assert {"name": "store-ca", "mountPath": builders.STORE_CA_PATH, "readOnly": True} in operator["volumeMounts"]
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["store-ca"]["secret"] == {"secretName": "susy-mongodb-ca",
                                             "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    env = {e["name"]: e.get("value") for e in operator["env"]}
    assert env["SUSY_STORE_CA_SECRET"] == "susy-mongodb-ca" and env["SUSY_STORE_CA_KEY"] == "ca.crt"


def test_mongodb_helm_test_pod_connects_with_tls(helm: str) -> None:
    """The ping pod uses the Secret's URI, so it asks for TLS, and has the CA where the URI names it:
    ca.crt alone from mongodb.tls.secretName (not the server's key)."""
    from pymongo.uri_parser import parse_uri

    objs = render(helm, PLATFORM, SECURED)
    (pod,) = [o for o in by_kind(objs, "Pod") if o["metadata"]["name"].endswith("-mongodb-test-ping")]
    (ping,) = pod["spec"]["containers"]
    env = {e["name"]: e for e in ping["env"]}
    assert env["MONGODB_URI"]["valueFrom"]["secretKeyRef"] == {"name": "susy-platform-mongodb", "key": "uri"}
    assert '"$MONGODB_URI"' in ping["command"][2]
    ca_file = parse_uri(_secret_uri(objs), validate=False)["options"]["tlsCAFile"]
    (mount,) = [m for m in ping["volumeMounts"] if m["name"] == "store-ca"]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "store-ca"]
    assert volume["secret"]["secretName"] == "susy-platform-mongodb-tls"
    (item,) = volume["secret"]["items"]
    assert item["key"] == "ca.crt" and f"{mount['mountPath']}/{item['path']}" == ca_file
    assert mount["readOnly"] is True
    # Without TLS, nothing of the kind.
    (pod,) = [o for o in by_kind(render(helm, PLATFORM), "Pod") if o["metadata"]["name"].endswith("-test-ping")]
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["tmp"]


def test_mongodb_tls_with_an_existing_secret_leaves_its_uri_alone(helm: str) -> None:
    objs = render(helm, PLATFORM, SECURED, "mongodb.auth.existingSecret=mine")
    assert not by_kind(objs, "Secret")
    _, mongod = _mongo(objs)
    assert "requireTLS" in mongod["args"]


def test_mongodb_tls_needs_a_secret(helm: str) -> None:
    proc = subprocess.run([helm, "template", "t", str(PLATFORM), "--set", "mongodb.tls.enabled=true"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "mongodb.tls.enabled needs mongodb.tls.secretName" in proc.stderr


# ---------------------------------------------------------------------------------------------
# Kafka in KRaft mode


# The image's wrapper leaves these as environment variables (KafkaDockerWrapper.scala, Constants).
NOT_PROPERTIES = {"KAFKA_VERSION", "KAFKA_HEAP_OPTS", "KAFKA_LOG4J_OPTS", "KAFKA_OPTS", "KAFKA_JMX_OPTS",
                  "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_GC_LOG_OPTS", "KAFKA_LOG4J_ROOT_LOGLEVEL",
                  "KAFKA_LOG4J_LOGGERS", "KAFKA_TOOLS_LOG4J_LOGLEVEL", "KAFKA_JMX_HOSTNAME"}


def pod_env(container: dict, pod_name: str, pod_index: str) -> dict[str, str]:
    """The container's environment as the kubelet gives it: fieldRefs for the pod's name and index,
    $(VAR) references to variables defined before expanded."""
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), item["value"])
        elif "fieldRef" in item.get("valueFrom", {}):
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            env[item["name"]] = pod_name if path == "metadata.name" else pod_index
    return env


def broker_properties(env: dict[str, str]) -> dict[str, str]:
    """server.properties as the image's launcher writes it from the environment: apache/kafka 3.9
    core/src/main/scala/kafka/docker/KafkaDockerWrapper.scala, getServerConfigsFromEnv."""
    props = {}
    for key, value in env.items():
        if key.startswith("KAFKA_") and key not in NOT_PROPERTIES:
            name = key.replace("KAFKA_", "").lower().replace("_", ".").replace("...", "-").replace("..", "_")
            props[name] = value
    return props


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in value.split(","):
        name, rest = item.split("://")
        host, port = rest.rsplit(":", 1)
        out[name] = (host, int(port))
    return out


def _launcher_checks(env: dict[str, str]) -> None:
    """What the image's configure step tests before it starts anything (apache/kafka 3.9
    docker/resources/common-scripts/configure): "SSL://" in KAFKA_ADVERTISED_LISTENERS demands a JKS
    keystore and password files, and a keystore password that a PEM keystore refuses; "SASL_" demands
    KAFKA_OPTS with a JAAS file. The chart's listener names must stay clear of both."""
    advertised = env["KAFKA_ADVERTISED_LISTENERS"]
    assert "SSL://" not in advertised
    assert not re.fullmatch(r".*SASL_.*://.*", advertised)


def _kafka_config_checks(props: dict[str, str]) -> None:
    """The parts of KafkaConfig.validateValues (apache/kafka 3.9 core/src/main/scala/kafka/server/
    KafkaConfig.scala) that a combined broker/controller's listeners must pass."""
    listeners = _listeners(props["listeners"])
    advertised = _listeners(props["advertised.listeners"])
    protocols = dict(item.split(":") for item in props["listener.security.protocol.map"].split(","))
    assert set(listeners) == set(protocols), "every listener has a protocol"
    assert len({port for _, port in listeners.values()}) == len(listeners), "one port each"
    controller = props["controller.listener.names"]
    assert controller in listeners
    assert set(advertised) <= set(listeners)
    assert props["inter.broker.listener.name"] in advertised
    # effectiveAdvertisedControllerListeners falls back to `listeners` (0.0.0.0) when the controller is
    # not advertised, which the 0.0.0.0 check then refuses (KAFKA-18281): so it is advertised.
    assert controller in advertised
    assert all(host != "0.0.0.0" for host, _ in advertised.values())
    node = props["node.id"]
    voters = dict(v.split("@") for v in props["controller.quorum.voters"].split(","))
    assert node in voters, "a controller is one of the voters"
    assert voters[node] == f"{advertised[controller][0]}:{advertised[controller][1]}"


def test_kraft_plaintext_advertises_its_controller_listener(helm: str) -> None:
    sts, kafka = _kafka(render(helm, PLATFORM, PLATFORM / "ci" / "kraft-values.yaml"))
    name = sts["metadata"]["name"]
    env = pod_env(kafka, f"{name}-2", "2")
    props = broker_properties(env)
    host = f"{name}-2.{sts['spec']['serviceName']}.{NAMESPACE}.svc.cluster.local"
    assert props["advertised.listeners"] == f"PLAINTEXT://{host}:9092,CONTROLLER://{host}:9093"
    assert props["listeners"] == "PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093"
    _launcher_checks(env)
    _kafka_config_checks(props)
    assert "initContainers" not in sts["spec"]["template"]["spec"]


def test_kraft_tls_and_scram_listeners_by_the_image_env_rule(helm: str) -> None:
    """ci/secured-kraft-values.yaml: the TLS listener on 9093 (the controller moved to 9095), SASL_SSL with
    SCRAM-SHA-256 on 9094, a PEM keystore, the SCRAM listener's JAAS line: the broker properties the
    image's launcher writes from the rendered environment."""
    objs = render(helm, PLATFORM, SECURED_KRAFT)
    sts, kafka = _kafka(objs)
    name, svc = sts["metadata"]["name"], sts["spec"]["serviceName"]
    env = pod_env(kafka, f"{name}-1", "1")
    props = broker_properties(env)
    host = f"{name}-1.{svc}.{NAMESPACE}.svc.cluster.local"
    assert props["listeners"] == ("PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9095,TLS://0.0.0.0:9093,"
                                  "SCRAM://0.0.0.0:9094")
    assert props["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,TLS:SSL,SCRAM:SASL_SSL"
    assert props["advertised.listeners"] == (f"PLAINTEXT://{host}:9092,CONTROLLER://{host}:9095,TLS://{host}:9093,"
                                             f"SCRAM://{host}:9094")
    assert (props["ssl.keystore.type"], props["ssl.keystore.location"]) == ("PEM", KEYSTORE)
    assert not [k for k in props if "password" in k], "a PEM keystore takes no keystore password"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-256"
    assert props["listener.name.scram.scram-sha-256.sasl.jaas.config"] == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required;")
    assert props["inter.broker.listener.name"] == "PLAINTEXT" and props["node.id"] == "1"
    _launcher_checks(env)
    _kafka_config_checks(props)
    assert not [e for e in kafka["env"] if e["name"].startswith("SASL_")], "the broker needs no user"
    ports = {p["name"]: p["containerPort"] for p in kafka["ports"]}
    assert ports == {"client": 9092, "client-tls": 9093, "client-sasl": 9094, "controller": 9095}
    mounts = {m["name"]: m for m in kafka["volumeMounts"]}
    assert mounts["keystore"] == {"name": "keystore", "mountPath": "/etc/kafka/keystore", "readOnly": True}
    assert "tls" not in mounts
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["keystore"]["emptyDir"]["medium"] == "Memory"
    assert volumes["tls"]["secret"]["secretName"] == "susy-platform-kafka-tls"
    service = next(s for s in by_kind(objs, "Service") if s["metadata"]["name"] == svc)
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {
        ("client", 9092), ("client-tls", 9093), ("client-sasl", 9094), ("controller", 9095)}
    # Clients reach the SCRAM listener only: on the TLS one (no client certificate) and the
    # plaintext one every connection is User:ANONYMOUS, the authorizer's super user.
    (policy,) = [p for p in by_kind(objs, "NetworkPolicy") if p["metadata"]["name"].endswith("-kafka")]
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": "client-sasl"}]
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["super.users"] == "User:ANONYMOUS"
    assert "allow.everyone.if.no.acl.found" not in props  # its default, false: ACLs decide


def test_kraft_sasl_without_tls_is_sasl_plaintext(helm: str) -> None:
    objs = render(helm, PLATFORM, PLATFORM / "ci" / "kraft-values.yaml", "kafka.sasl.enabled=true",
                  "kafka.sasl.secretName=s")
    sts, kafka = _kafka(objs)
    env = pod_env(kafka, f"{sts['metadata']['name']}-0", "0")
    props = broker_properties(env)
    assert props["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SCRAM:SASL_PLAINTEXT"
    assert props["listener.name.scram.scram-sha-512.sasl.jaas.config"].startswith("org.apache.kafka.common.security.scram")
    assert "ssl.keystore.location" not in props
    _launcher_checks(env)
    _kafka_config_checks(props)


# PemParser's pattern for one PEM entry (DefaultSslEngineFactory.java, PemParser), as Kafka reads a
# PEM keystore: "-+BEGIN\s*.*NAME[^-]*-+\s+" base64 "-+END\s*.*NAME[^-]*-+\s+".
def pem_entries(pem: str, name: str) -> list[bytes]:
    begin_or_end = r"-+%s\s*.*%s[^-]*-+\s+"
    name_pattern = name.replace(" ", r"\s+")
    pattern = (begin_or_end % ("BEGIN", name_pattern) + r"(?:\s*[^\r\n]*:[^\r\n]*[\r\n]+)*"
               + r"([a-zA-Z0-9/+=\s]*)" + begin_or_end % ("END", name_pattern))
    return [base64.b64decode(re.sub(r"\s", "", m.group(1))) for m in re.finditer(pattern, pem + "\n")]


def _prepare(sts: dict) -> dict:
    (init,) = sts["spec"]["template"]["spec"]["initContainers"]
    assert init["name"] == "prepare" and init["command"][:2] == ["bash", "-c"]
    return init


def _run_prepare(init: dict, tmp_path: Path, pod: str, index: str, user: str, password: str,
                 ) -> tuple[subprocess.CompletedProcess[str], Path]:
    tls, keystore, tmp = tmp_path / "tls", tmp_path / "keystore", tmp_path / "tmp"
    keystore.mkdir()
    tmp.mkdir()
    storage = _stub(tmp_path / "bin", "kafka-storage.sh")
    script = _substitute(init["command"][2], {"/etc/kafka/tls/": f"{tls}/", KEYSTORE: f"{keystore}/keystore.pem"})
    if "storage=" in script:
        script = _substitute(script, {"conf=/tmp/format.properties\n": f"conf={tmp}/format.properties\n",
                                      "storage=/opt/kafka/bin/kafka-storage.sh\n": f"storage={storage}\n"})
    env = {e["name"]: e["value"] for e in init.get("env", []) if "value" in e}
    env |= {"POD_NAME": pod, "POD_INDEX": index, "SASL_USERNAME": user, "SASL_PASSWORD": password}
    return _run(script, env), tmp_path


def test_kraft_prepare_writes_the_pem_keystore_kafka_reads(helm: str, tmp_path: Path) -> None:
    """The init container's keystore, from a cert-manager-like Secret (privateKey.encoding: PKCS8): one
    PKCS#8 private key, then the chain, each entry found by Kafka's PemParser pattern; OpenSSL loads the
    file as key and chain and serves a handshake that verifies against ca.crt for a broker's name."""
    sts, kafka = _kafka(render(helm, PLATFORM, SECURED_KRAFT))
    name, svc = sts["metadata"]["name"], sts["spec"]["serviceName"]
    host = f"{name}-0.{svc}.{NAMESPACE}.svc.cluster.local"
    issue(tmp_path / "tls", [host, f"*.{svc}.{NAMESPACE}.svc.cluster.local"])
    key_text = (tmp_path / "tls" / "tls.key").read_text()
    (tmp_path / "tls" / "tls.key").write_text(key_text.rstrip("\n"))  # no final newline: still parsed
    proc, _ = _run_prepare(_prepare(sts), tmp_path, f"{name}-0", "0", "susy", "pw42")
    assert proc.returncode == 0, proc.stderr
    keystore = tmp_path / "keystore" / "keystore.pem"
    assert broker_properties(pod_env(kafka, "x-0", "0"))["ssl.keystore.location"] == KEYSTORE
    pem = keystore.read_text()
    (key_der,) = pem_entries(pem, "PRIVATE KEY")
    serialization.load_der_private_key(key_der, password=None)  # PKCS8EncodedKeySpec: PKCS#8 DER
    (cert_der,) = pem_entries(pem, "CERTIFICATE")
    assert x509.load_der_x509_certificate(cert_der).subject.rfc4514_string() == f"CN={host}"
    assert handshake(keystore, tmp_path / "tls" / "ca.crt", f"{name}-2.{svc}.{NAMESPACE}.svc.cluster.local")


def test_kraft_prepare_writes_no_user_and_takes_no_password(helm: str) -> None:
    """kafka.sasl in KRaft: the init container only writes the keystore. `kafka-storage.sh format
    --add-scram` would put the password on a command line; the topic Job sets the user instead."""
    sts, kafka = _kafka(render(helm, PLATFORM, SECURED_KRAFT))
    init = _prepare(sts)
    assert "kafka-storage.sh" not in init["command"][2] and "SASL" not in init["command"][2]
    assert "env" not in init
    sts, _ = _kafka(render(helm, PLATFORM, PLATFORM / "ci" / "kraft-values.yaml", "kafka.sasl.enabled=true",
                           "kafka.sasl.secretName=s"))
    assert "initContainers" not in sts["spec"]["template"]["spec"]


def _run_topic_job(job: dict, tmp_path: Path, user: str, password: str) -> subprocess.CompletedProcess[str]:
    """The topic Job's script with the Kafka tools stubbed (kafka-configs.sh also keeps the file it
    was given, test_charts.scram_stub) and its scratch file in tmp_path."""
    from test_charts import scram_stub

    (c,) = job["spec"]["template"]["spec"]["containers"]
    bin_dir = tmp_path / "bin"
    _stub(bin_dir, "kafka-topics.sh")
    _stub(bin_dir, "kafka-acls.sh")
    scram_stub(bin_dir, "kafka-configs.sh")
    script = _substitute(c["command"][2], {"/opt/kafka/bin/": f"{bin_dir}/"})
    script = script.replace("/tmp/scram.properties", str(tmp_path / "scram.properties"))
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    return _run(script, {**env, "SASL_USERNAME": user, "SASL_PASSWORD": password})


@pytest.mark.parametrize("user, password, message", [
    ("susy", "pw,iterations=1", "the password in the Secret susy-platform-kafka-scram (kafka.sasl.secretName) must be"),
    ("su=sy", "pw42", "the user name in the Secret susy-platform-kafka-scram (kafka.sasl.secretName) must be"),
])
def test_kraft_topic_job_refuses_a_user_the_scram_syntax_cannot_carry(helm: str, tmp_path: Path, user: str,
                                                                      password: str, message: str) -> None:
    (job,) = by_kind(render(helm, PLATFORM, SECURED_KRAFT), "Job")
    proc = _run_topic_job(job, tmp_path, user, password)
    assert proc.returncode == 1 and message in proc.stderr
    assert password not in proc.stderr
    assert not (tmp_path / "bin" / "kafka-configs.sh.args").exists()


def test_kraft_tls_only_prepares_the_keystore_alone(helm: str, tmp_path: Path) -> None:
    objs = render(helm, PLATFORM, PLATFORM / "ci" / "kraft-values.yaml", "kafka.tls.enabled=true",
                  "kafka.tls.secretName=t", "kafka.controllerPort=9095")
    sts, _ = _kafka(objs)
    init = _prepare(sts)
    assert "env" not in init and "kafka-storage.sh" not in init["command"][2]
    assert {m["name"] for m in init["volumeMounts"]} == {"tls", "keystore"}
    issue(tmp_path / "tls", ["x"])
    proc, _ = _run_prepare(init, tmp_path, "k-0", "0", "", "")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "keystore" / "keystore.pem").exists()
    (job,) = by_kind(objs, "Job")
    assert "kafka-configs.sh" not in job["spec"]["template"]["spec"]["containers"][0]["command"][2]


def test_kraft_topic_job_sets_the_scram_user_on_every_install_and_upgrade(helm: str, tmp_path: Path) -> None:
    """KRaft: the post-install/post-upgrade Job sets the user through the plaintext listener
    (kafka-configs.sh --bootstrap-server, stubbed here), the password in a file only its user may read
    (never an argument), deleted once used; then the user's ACLs, in both modes."""
    objs = render(helm, PLATFORM, SECURED_KRAFT)
    (job,) = by_kind(objs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    proc = _run_topic_job(job, tmp_path, "susy", "pw42")
    assert proc.returncode == 0, proc.stderr
    assert "pw42" not in proc.stdout + proc.stderr
    bin_dir = tmp_path / "bin"
    (c,) = job["spec"]["template"]["spec"]["containers"]
    bootstrap = {e["name"]: e["value"] for e in c["env"] if "value" in e}["BOOTSTRAP"]
    scram_file = str(tmp_path / "scram.properties")
    assert (bin_dir / "kafka-configs.sh.args").read_text().split("\n")[:-1] == [
        "--bootstrap-server", bootstrap, "--alter", "--entity-type", "users", "--entity-name", "susy",
        "--add-config-file", scram_file]
    assert (bin_dir / "kafka-configs.sh.file").read_text() == "SCRAM-SHA-256=password=pw42\n"
    assert (bin_dir / "kafka-configs.sh.mode").read_text().strip() == "600"
    assert not Path(scram_file).exists()
    assert bootstrap.endswith(":9092"), "the plaintext listener"
    # The last kafka-acls.sh call (the stub keeps one): consume any topic with any group.
    assert (bin_dir / "kafka-acls.sh.args").read_text().split("\n")[:-1] == [
        "--bootstrap-server", bootstrap, "--add", "--allow-principal", "User:susy", "--consumer", "--topic", "*",
        "--group", "*"]
    assert "--producer --topic '*'" in c["command"][2]
    assert "--cluster" not in c["command"][2], "nothing on the cluster: no AlterUserScramCredentials"
    secret_env = {e["name"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert secret_env == {"SASL_USERNAME", "SASL_PASSWORD"}
    # ZooKeeper mode: the brokers set the user in ZooKeeper; the Job sets its ACLs, and never sees the password.
    (job,) = by_kind(render(helm, PLATFORM, SECURED), "Job")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert "kafka-configs.sh" not in c["command"][2] and "kafka-acls.sh" in c["command"][2]
    assert [e["name"] for e in c["env"] if e["name"].startswith("SASL_")] == ["SASL_USERNAME"]


def test_no_kafka_tool_gets_a_password_as_an_argument(helm: str) -> None:
    """Every container script of the secured platform: the SCRAM password is written to a file by
    bash's printf (a builtin, no process), never passed to a command."""
    for values in (SECURED, SECURED_KRAFT):
        for obj in render(helm, PLATFORM, values):
            for c in containers(obj):
                script = " ".join(c.get("command", []) + c.get("args", []))
                uses = [line.strip() for line in script.splitlines() if "$SASL_PASSWORD" in line]
                assert all(line.startswith(("( umask 077; printf ", "[[ $SASL_PASSWORD =~")) for line in uses), uses


def test_secured_network_policy_keeps_clients_off_the_unauthenticated_listeners(helm: str) -> None:
    """Plaintext, the TLS listener beside SASL and the controller port: only this release's brokers,
    topic Job and test pods, selected in the platform's namespace. A pod carrying the pipeline's label
    (which any user who creates pods can set) reaches the SASL port alone."""
    objs = render(helm, PLATFORM, SECURED_KRAFT, "networkPolicy.clientNamespaces={team-a}")
    (policy,) = [p for p in by_kind(objs, "NetworkPolicy") if p["metadata"]["name"].endswith("-kafka")]
    clients, plaintext, brokers = policy["spec"]["ingress"]
    assert clients["ports"] == [{"protocol": "TCP", "port": "client-sasl"}]
    assert {"app.kubernetes.io/managed-by": "susy-operator"} in [f["podSelector"]["matchLabels"] for f in clients["from"]]
    assert plaintext["ports"] == [{"protocol": "TCP", "port": "client"}]
    assert [f["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for f in plaintext["from"]] == [
        "kafka-topics", "test"]
    assert all(set(f) == {"podSelector"} for f in plaintext["from"] + brokers["from"]), "no other namespace"
    assert all(f["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "susy-platform"
               for f in plaintext["from"] + brokers["from"])
    assert "ports" not in brokers and brokers["from"][0]["podSelector"]["matchLabels"][
        "app.kubernetes.io/component"] == "kafka"
    # TLS alone: clients on the TLS port (it authenticates nobody; docs/deploy.md says so).
    objs = render(helm, PLATFORM, SECURED, "kafka.sasl.enabled=false")
    (policy,) = [p for p in by_kind(objs, "NetworkPolicy") if p["metadata"]["name"].endswith("-kafka")]
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": "client-tls"}]
    # Plaintext platform: as before, the client port for the pipeline, the operator, the topic Job and tests.
    (policy,) = [p for p in by_kind(render(helm, PLATFORM), "NetworkPolicy") if p["metadata"]["name"].endswith("-kafka")]
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": "client"}]


@pytest.mark.parametrize("sets, message", [
    (("kafka.mode=kraft", "zookeeper.enabled=false", "kafka.tls.enabled=true", "kafka.tls.secretName=x"),
     "kafka.controllerPort and kafka.tls.port are both 9093: every Kafka listener needs a port of its own "
     "(kafka.controllerPort's default is kafka.tls.port's, 9093: give the KRaft controller listener a free port, "
     "e.g. kafka.controllerPort=9095)"),
    (("kafka.sasl.enabled=true", "kafka.sasl.secretName=x", "kafka.sasl.port=9092"),
     "kafka.port and kafka.sasl.port are both 9092: every Kafka listener needs a port of its own\n"),
])
def test_kafka_listener_ports_must_differ(helm: str, sets: tuple[str, ...], message: str) -> None:
    args = [helm, "template", "t", str(PLATFORM)] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_secured_kraft_values_file_is_linted_and_validated_with_the_rest() -> None:
    """tests/test_charts.py runs helm lint --strict and the strict schema validation over every
    ci/*-values.yaml: the secured KRaft file is one of them."""
    from test_charts import CASE_IDS

    assert "susy-platform:secured-kraft-values.yaml" in CASE_IDS
    assert "susy-platform:secured-values.yaml" in CASE_IDS


def test_notes_tell_the_operator_install_about_the_ca(helm: str) -> None:
    from test_charts import run_helm

    args = ("install", "susy-platform", str(PLATFORM), "--dry-run=client", "--namespace", NAMESPACE)
    notes = run_helm(helm, *args, "--values", str(SECURED)).split("NOTES:", 1)[1]
    assert "/etc/susy/store-ca/ca.crt" in notes and "--set store.caSecretName=" in notes
    assert "store.caSecretName" not in run_helm(helm, *args).split("NOTES:", 1)[1]
