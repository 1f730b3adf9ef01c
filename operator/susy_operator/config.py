"""The operator's settings, read once from its environment (set by charts/susy-operator)."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from susy_operator import crd, spec, tenancy
from susy_operator.builders import JobConfig
from susy_pipeline.schema import DEFAULT_DATABASE


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    # image: the pipeline image every Job runs unless a CR names its own (SUSY_PIPELINE_IMAGE).
    image: str
    # kafka_bootstrap: host:port list the producer and trainer connect to (SUSY_KAFKA_BOOTSTRAP).
    kafka_bootstrap: str
    # store_secret: Secret holding the MongoDB URI; Jobs get it via secretKeyRef (SUSY_STORE_SECRET).
    store_secret: str
    # database: database name inside the store (SUSY_DATABASE).
    database: str
    # store_uri: the operator's own store connection, to read model ids, production records and
    # shard results (MONGODB_URI, from the same Secret in the chart). None: the store is not readable.
    store_uri: str | None
    # poll_seconds: how often a running CR looks at its Jobs without being woken (SUSY_POLL_SECONDS).
    # Job and pod events wake a run at once; this timer is the safety net for a missed event.
    poll_seconds: float
    # image_pull_policy: for every Job container (SUSY_IMAGE_PULL_POLICY); kind loads images, so IfNotPresent.
    image_pull_policy: str = "IfNotPresent"
    # job_service_account: service account of the Job pods; empty means the namespace default.
    job_service_account: str | None = None
    # missing_run_grace_seconds: how long an EvaluationRun waits for a TrainingRun it names to
    # appear before it fails with TrainingRunNotFound (SUSY_MISSING_RUN_GRACE_SECONDS).
    missing_run_grace_seconds: float = 300.0
    # pod_start_grace_seconds: how long a pod may fail to start (CreateContainerConfigError,
    # ImagePullBackOff, Unschedulable, ...) before its run fails (SUSY_POD_START_GRACE_SECONDS).
    pod_start_grace_seconds: float = 300.0
    # max_workers: threads for the synchronous handlers (SUSY_MAX_WORKERS).
    max_workers: int = 16
    # store_secret_key: the key of the URI in store_secret (SUSY_STORE_URI_KEY; the chart's
    # store.secretKey). The operator's own MONGODB_URI and every Job's must name the same key.
    store_secret_key: str = crd.STORE_SECRET_KEY
    # kafka_secret: a Secret with the Kafka client's security settings and files, given to every
    # Job (SUSY_KAFKA_SECRET; the chart's kafka.secretName). None: plaintext Kafka.
    kafka_secret: str | None = None
    # store_ca_secret: a Secret with a TLS MongoDB's CA bundle, mounted in every Job
    # (SUSY_STORE_CA_SECRET; the chart's store.caSecretName).
    store_ca_secret: str | None = None
    # store_ca_key: the one key of store_ca_secret that is mounted, as STORE_CA_PATH/ca.crt
    # (SUSY_STORE_CA_KEY; the chart's store.caKey). One key only: a cert-manager Secret also
    # holds the server's private key, which no pipeline pod should get.
    store_ca_key: str = "ca.crt"
    # allowed_volume_types: volume sources a CR's spec.volumes may use besides persistentVolumeClaim
    # (SUSY_ALLOWED_VOLUME_TYPES, comma-separated: configMap, hostPath; the chart's
    # allowedVolumeTypes). Empty by default: hostPath reads the node's files, and a configMap
    # is cluster configuration, so a cluster administrator opts in.
    allowed_volume_types: frozenset[str] = spec.ALWAYS_ALLOWED_VOLUME_TYPES
    # watch_all_namespaces: the operator serves every namespace (SUSY_WATCH_ALL_NAMESPACES=true; the
    # chart sets it with watchAllNamespaces, beside kopf's --all-namespaces). A TrainingRun then
    # looks for runs of its topic in every namespace, since one Kafka serves them all.
    watch_all_namespaces: bool = False
    # namespace_store_secret / namespace_store_key: per-namespace store credentials (the chart's
    # store.perNamespaceSecret.name and .key; SUSY_STORE_NAMESPACE_SECRET, SUSY_STORE_NAMESPACE_KEY).
    # When set, every Job reads MONGODB_URI from that Secret in its run's namespace, so each team
    # has its own MongoDB user; the operator keeps its own URI (store_uri) to read every namespace.
    namespace_store_secret: str | None = None
    namespace_store_key: str = crd.STORE_SECRET_KEY
    # namespace_database: each namespace's database, "{namespace}" replaced by the run's namespace
    # (SUSY_NAMESPACE_DATABASE; the chart's store.perNamespaceDatabase, e.g. "susy-{namespace}").
    # None: `database` for all, records told apart by their namespace field alone.
    namespace_database: str | None = None
    # The tenancy settings (tenancy.Policy; the chart's tenancy.* values): glob patterns, comma-separated.
    # allowed_images (SUSY_ALLOWED_IMAGES): images a CR may name besides `image`.
    allowed_images: tuple[str, ...] = ()
    # allowed_env (SUSY_ALLOWED_ENV): the only env names a CR may set; empty: any unreserved name.
    allowed_env: tuple[str, ...] = ()
    # allowed_secrets, allowed_claims (SUSY_ALLOWED_SECRETS, SUSY_ALLOWED_CLAIMS): Secrets and
    # PersistentVolumeClaims any run may use, besides those labelled susy.dev/allow-runs=true.
    allowed_secrets: tuple[str, ...] = ()
    allowed_claims: tuple[str, ...] = ()
    # run_ttl_seconds_after_finished: how long a finished TrainingRun or EvaluationRun is kept before
    # the operator deletes it, unless its spec.ttlSecondsAfterFinished says otherwise
    # (SUSY_RUN_TTL_SECONDS_AFTER_FINISHED; the chart's runTtlSecondsAfterFinished). None: kept
    # forever. Its models, evaluations and aliases stay in the store.
    run_ttl_seconds_after_finished: int | None = None
    # metrics_port: where the operator serves Prometheus metrics, /metrics (SUSY_METRICS_PORT; the
    # chart's metrics.port). 0: not served.
    metrics_port: int = 8000
    # heartbeat_stale_seconds: how long a running shard's or trainer's heartbeat may stay unchanged
    # before the run gets a Warning Event naming it (SUSY_HEARTBEAT_STALE_SECONDS; the chart's
    # heartbeatStaleSeconds). Shards beat every 5 s, so 60 s is twelve missed beats.
    heartbeat_stale_seconds: float = 60.0
    # heartbeat_seconds: the heartbeat interval given to evaluator pods (SUSY_HEARTBEAT_SECONDS in
    # their env); None leaves the pipeline's default (5 s).
    heartbeat_seconds: float | None = None
    # tfio_librdkafka: librdkafka settings ("key=value,...") every Job gets as SUSY_TFIO_LIBRDKAFKA,
    # which the tfio reader alone applies (SUSY_TFIO_LIBRDKAFKA; the chart's kafka.tfioLibrdkafka).
    tfio_librdkafka: str = ""

    @property
    def job_config(self) -> JobConfig:
        return JobConfig(image=self.image, kafka_bootstrap=self.kafka_bootstrap,
                         store_secret=self.namespace_store_secret or self.store_secret,
                         store_secret_key=self.namespace_store_key if self.namespace_store_secret
                         else self.store_secret_key,
                         database=self.database, namespace_database=self.namespace_database,
                         image_pull_policy=self.image_pull_policy, service_account=self.job_service_account,
                         kafka_secret=self.kafka_secret, store_ca_secret=self.store_ca_secret,
                         store_ca_key=self.store_ca_key, heartbeat_seconds=self.heartbeat_seconds,
                         tfio_librdkafka=self.tfio_librdkafka)

    @property
    def tenancy(self) -> tenancy.Policy:
        own = {self.store_secret, self.namespace_store_secret, self.kafka_secret, self.store_ca_secret}
        return tenancy.Policy(default_image=self.image, allowed_images=self.allowed_images,
                              allowed_env=self.allowed_env, allowed_secrets=self.allowed_secrets,
                              allowed_claims=self.allowed_claims,
                              operator_secrets=frozenset(name for name in own if name))


def load(environ: Mapping[str, str] | None = None) -> OperatorConfig:
    env = os.environ if environ is None else environ
    return OperatorConfig(
        image=env.get("SUSY_PIPELINE_IMAGE", "susy-pipeline:0.1.0"),
        # The defaults are what `helm install susy-platform` creates (release name susy-platform).
        kafka_bootstrap=env.get("SUSY_KAFKA_BOOTSTRAP", "susy-platform-kafka:9092"),
        store_secret=env.get("SUSY_STORE_SECRET", "susy-platform-mongodb"),
        store_secret_key=env.get("SUSY_STORE_URI_KEY") or crd.STORE_SECRET_KEY,
        database=env.get("SUSY_DATABASE", DEFAULT_DATABASE),
        store_uri=env.get("MONGODB_URI") or None,
        poll_seconds=float(env.get("SUSY_POLL_SECONDS", "30")),
        image_pull_policy=env.get("SUSY_IMAGE_PULL_POLICY", "IfNotPresent"),
        job_service_account=env.get("SUSY_JOB_SERVICE_ACCOUNT") or None,
        missing_run_grace_seconds=float(env.get("SUSY_MISSING_RUN_GRACE_SECONDS", "300")),
        pod_start_grace_seconds=float(env.get("SUSY_POD_START_GRACE_SECONDS", "300")),
        kafka_secret=env.get("SUSY_KAFKA_SECRET") or None,
        store_ca_secret=env.get("SUSY_STORE_CA_SECRET") or None,
        store_ca_key=env.get("SUSY_STORE_CA_KEY") or "ca.crt",
        max_workers=int(env.get("SUSY_MAX_WORKERS", "16")),
        allowed_volume_types=allowed_volume_types(env.get("SUSY_ALLOWED_VOLUME_TYPES", "")),
        watch_all_namespaces=env.get("SUSY_WATCH_ALL_NAMESPACES", "").lower() == "true",
        namespace_store_secret=env.get("SUSY_STORE_NAMESPACE_SECRET") or None,
        namespace_store_key=env.get("SUSY_STORE_NAMESPACE_KEY") or crd.STORE_SECRET_KEY,
        namespace_database=namespace_database(env.get("SUSY_NAMESPACE_DATABASE", "")),
        allowed_images=patterns(env.get("SUSY_ALLOWED_IMAGES", "")),
        allowed_env=patterns(env.get("SUSY_ALLOWED_ENV", "")),
        allowed_secrets=patterns(env.get("SUSY_ALLOWED_SECRETS", "")),
        allowed_claims=patterns(env.get("SUSY_ALLOWED_CLAIMS", "")),
        run_ttl_seconds_after_finished=_seconds_or_none("SUSY_RUN_TTL_SECONDS_AFTER_FINISHED",
                                                        env.get("SUSY_RUN_TTL_SECONDS_AFTER_FINISHED", "")),
        metrics_port=int(env.get("SUSY_METRICS_PORT", "8000")),
        heartbeat_stale_seconds=float(env.get("SUSY_HEARTBEAT_STALE_SECONDS", "60")),
        heartbeat_seconds=float(env["SUSY_HEARTBEAT_SECONDS"]) if env.get("SUSY_HEARTBEAT_SECONDS") else None,
        tfio_librdkafka=env.get(crd.ENV_TFIO_LIBRDKAFKA, ""),
    )


def patterns(value: str) -> tuple[str, ...]:
    """A comma-separated list of glob patterns, as the chart joins a list value."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def namespace_database(value: str) -> str | None:
    """SUSY_NAMESPACE_DATABASE: it must contain "{namespace}" (else every namespace would share one
    database under a per-namespace name) and none of the characters MongoDB refuses in a database
    name (/\\. "$, its "Naming Restrictions"); builders.JobConfig.database_for keeps the result
    under MongoDB's 64-byte limit."""
    if not value:
        return None
    if "{namespace}" not in value or any(c in value for c in '/\\. "$'):
        raise ValueError(f"SUSY_NAMESPACE_DATABASE {value!r} must contain {{namespace}} and none of "
                         "/ \\ . space \" $ (a MongoDB database name)")
    return value


def _seconds_or_none(name: str, value: str) -> int | None:
    """A whole number of seconds, or None for an empty value; anything else stops the operator at start."""
    if not value.strip():
        return None
    if not value.strip().isdigit():
        raise ValueError(f"{name}: {value!r} is not a whole number of seconds (or empty: off)")
    return int(value)


def allowed_volume_types(value: str) -> frozenset[str]:
    """SUSY_ALLOWED_VOLUME_TYPES ("configMap,hostPath") as a set; an unknown type stops the operator
    at start rather than being ignored."""
    names = {part.strip() for part in value.split(",") if part.strip()}
    unknown = names - set(spec.VOLUME_TYPES)
    if unknown:
        raise ValueError(f"SUSY_ALLOWED_VOLUME_TYPES: unknown volume type(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(spec.VOLUME_TYPES)}")
    return spec.ALWAYS_ALLOWED_VOLUME_TYPES | names
