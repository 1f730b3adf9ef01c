"""Job manifests for the pipeline stages, as plain dicts.

Every builder is pure (no kopf, no client, no clock): the same inputs give the same dict, so a
retried handler builds an identical Job and `create` answers 409 for the one it already made.
Names are deterministic (`<cr>-producer`, `<cr>-trainer`, `<cr>-eval`) and fit 63 characters.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from susy_operator import crd, tenancy
from susy_operator.spec import EvaluationRunSpec, RunPolicy, Scheduling, TrainingRunSpec, Volumes

PIPELINE_MODULE = ("python", "-m", "susy_pipeline")
SCRATCH_VOLUME = "scratch"
SCRATCH_PATH = "/tmp"
RUN_AS_USER = 10001
# MongoDB: "Database names cannot be empty and must have fewer than 64 characters" (its manual,
# "Naming Restrictions"); namespaces are ASCII, so characters are bytes here.
MAX_DATABASE_NAME = 63

# Defaults when a CR sets no resources: the trainer and evaluator load TensorFlow.
DEFAULT_RESOURCES: Mapping[str, Mapping[str, Any]] = {
    crd.PRODUCER: {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
    crd.TRAINER: {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
    # One CPU per shard: the evaluator runs one model call per CPU it may use (its CPU limit).
    crd.EVALUATOR: {"requests": {"cpu": "500m", "memory": "1536Mi"}, "limits": {"cpu": "1", "memory": "3Gi"}},
}


@dataclasses.dataclass(frozen=True)
class Owner:
    """The custom resource that owns a Job (ownerReferences, labels, names)."""
    kind: str
    name: str
    namespace: str
    uid: str
    api_version: str = crd.API_VERSION

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Owner":
        meta = body["metadata"]
        return cls(kind=body["kind"], name=meta["name"], namespace=meta["namespace"], uid=meta["uid"],
                   api_version=body.get("apiVersion", crd.API_VERSION))


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """What the operator's own configuration contributes to every Job (contracts.md §4)."""
    image: str
    kafka_bootstrap: str
    store_secret: str
    database: str
    store_secret_key: str = crd.STORE_SECRET_KEY
    image_pull_policy: str = "IfNotPresent"
    service_account: str | None = None
    # A Secret with the Kafka client's security settings (kafka_security.py in the pipeline): its
    # keys that are variable names become env (envFrom), and it is mounted read-only at
    # KAFKA_SECRET_PATH for its files (ca.crt, user.crt, user.key), e.g. a Strimzi KafkaUser's.
    kafka_secret: str | None = None
    # A Secret with the CA bundle of a TLS MongoDB (mounted at STORE_CA_PATH; the URI names the file,
    # e.g. ...?tls=true&tlsCAFile=/etc/susy/store-ca/ca.crt).
    store_ca_secret: str | None = None
    # Its one key mounted, as STORE_CA_PATH/ca.crt (a cert-manager Secret also holds tls.key).
    store_ca_key: str = "ca.crt"
    # namespace_database: the database of each namespace's records, "{namespace}" replaced by the
    # run's namespace (e.g. "susy-{namespace}"); None: `database` for every namespace.
    namespace_database: str | None = None
    # tfio_librdkafka: settings for the tfio reader's librdkafka 1.5.0 ("key=value,..."), the
    # platform's to set (SUSY_TFIO_LIBRDKAFKA on the operator, the chart's kafka.tfioLibrdkafka),
    # never a CR's: spec.env reserves SUSY_*, since librdkafka's plugin.library.paths loads code.
    tfio_librdkafka: str = ""

    def database_for(self, namespace: str) -> str:
        """The database of a namespace's records. MongoDB refuses names of 64 bytes or more: a
        longer one is cut and ends in a hash of the whole, so two namespaces never share one."""
        if not self.namespace_database:
            return self.database
        name = self.namespace_database.replace("{namespace}", namespace)
        if len(name) <= MAX_DATABASE_NAME:
            return name
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        return f"{name[: MAX_DATABASE_NAME - len(digest) - 1]}-{digest}"
    # The heartbeat interval for pipeline pods (SUSY_HEARTBEAT_SECONDS); None: the pipeline's default.
    heartbeat_seconds: float | None = None


KAFKA_SECRET_PATH = "/etc/susy/kafka"
STORE_CA_PATH = "/etc/susy/store-ca"


def _secret_mounts(config: JobConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(envFrom, volumes, volumeMounts) for the connection Secrets the operator names."""
    env_from, volumes, mounts = [], [], []
    if config.kafka_secret:
        env_from.append({"secretRef": {"name": config.kafka_secret}})
        volumes.append({"name": "kafka-client", "secret": {"secretName": config.kafka_secret}})
        mounts.append({"name": "kafka-client", "mountPath": KAFKA_SECRET_PATH, "readOnly": True})
    if config.store_ca_secret:
        volumes.append({"name": "store-ca", "secret": {"secretName": config.store_ca_secret,
                                                      "items": [{"key": config.store_ca_key, "path": "ca.crt"}]}})
        mounts.append({"name": "store-ca", "mountPath": STORE_CA_PATH, "readOnly": True})
    return env_from, volumes, mounts


def user_volumes(volumes: Volumes, *, read_only: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts) of a CR, deep-copied; `read_only` forces every mount read-only.

    The evaluator only reads its data, so its mounts are read-only whatever the CR says: a shard
    retried or run twice cannot change what the next one scores.
    """
    pod_volumes = [copy.deepcopy(dict(v)) for v in volumes.volumes]
    mounts = [copy.deepcopy(dict(m)) for m in volumes.mounts]
    if read_only:
        for mount in mounts:
            mount["readOnly"] = True
    return pod_volumes, mounts


def data_secret(secret_name: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(envFrom, env) for the dataset's credentials Secret: its keys become the environment
    (AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS, ...), and SUSY_DATA_SECRET names it so
    the pipeline's errors say which Secret to fix. Nothing secret goes into the Job itself."""
    if not secret_name:
        return [], []
    return ([{"secretRef": {"name": secret_name}}],
            [{"name": crd.ENV_DATA_SECRET, "value": secret_name}])


def job_name(cr_name: str, component: str, completions: int | None = None) -> str:
    """`<cr>-<suffix>`, or a hash-shortened form when that would not fit.

    An Indexed Job (`completions` given) must leave room for its pods' hostnames: the API server
    refuses one unless `<job name>-<completions - 1>` is a DNS label of at most 63 characters
    (kubernetes pkg/apis/batch/validation/validation.go, ValidateJob: "will not able to create
    pod with invalid DNS label"). A name that fits as it is keeps its plain form, so a Job named
    by an older operator is still found.
    """
    suffix = crd.JOB_SUFFIX[component]
    limit = crd.MAX_NAME - (len(f"-{completions - 1}") if completions else 0)
    name = f"{cr_name}-{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(cr_name.encode()).hexdigest()[:8]
    head = cr_name[: limit - len(suffix) - len(digest) - 2].rstrip("-.")
    return f"{head}-{digest}-{suffix}"


def _label_value(value: str) -> str:
    return value[: crd.MAX_NAME].rstrip("-_.")


def labels(owner: Owner, component: str) -> dict[str, str]:
    selector = crd.LABEL_TRAINING_RUN if owner.kind == crd.TRAINING_KIND else crd.LABEL_EVALUATION_RUN
    return {
        crd.LABEL_NAME: crd.APP_NAME,
        crd.LABEL_INSTANCE: _label_value(owner.name),
        crd.LABEL_COMPONENT: component,
        crd.LABEL_PART_OF: crd.PART_OF,
        crd.LABEL_MANAGED_BY: crd.MANAGED_BY,
        selector: _label_value(owner.name),
    }


def kueue_labels(scheduling: Scheduling) -> dict[str, str]:
    """The labels by which Kueue's batch/v1 Job integration manages a Job: its LocalQueue, and the
    WorkloadPriorityClass when one is named (only with a queue: without one Kueue ignores the Job,
    kueue pkg/controller/jobframework/reconciler.go, ReconcileGenericJob, "queue-name label is
    not set, ignoring the job")."""
    if not scheduling.queued:
        return {}
    assert scheduling.queue_name is not None
    result = {crd.LABEL_KUEUE_QUEUE: scheduling.queue_name}
    if scheduling.workload_priority_class_name:
        result[crd.LABEL_KUEUE_PRIORITY] = scheduling.workload_priority_class_name
    return result


def created_suspended(scheduling: Scheduling) -> bool:
    """Whether a run's Job is created with spec.suspend: while spec.suspend holds the run, and always
    with a queue. Kueue's webhook would suspend a queued Job on create (kueue
    pkg/controller/jobframework/defaults.go, ApplyDefaultForSuspend), but a Job created running
    starts pods before a cluster without the webhook could stop them: the integration's own
    contract is a Job created suspended that Kueue admits by un-suspending it
    (pkg/controller/jobs/job/job_controller.go, RunWithPodSetsInfo sets spec.suspend false)."""
    return scheduling.suspend or scheduling.queued


def owner_reference(owner: Owner) -> dict[str, Any]:
    # controller + blockOwnerDeletion: foreground deletion of the CR waits for its Jobs,
    # and `kubectl delete trainingrun` (background) lets the garbage collector remove them.
    return {"apiVersion": owner.api_version, "kind": owner.kind, "name": owner.name, "uid": owner.uid,
            "controller": True, "blockOwnerDeletion": True}


def merge_env(base: Sequence[Mapping[str, Any]], extra: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Operator-set env first; user env is added by name, never duplicating or replacing a set name."""
    result = [copy.deepcopy(dict(item)) for item in base]
    seen = {item["name"] for item in result}
    for name, value in extra:
        if name not in seen:
            result.append({"name": name, "value": value})
            seen.add(name)
    return result


def pipeline_env(config: JobConfig, namespace: str, run_name: str | None = None,
                 data_secret_name: str | None = None) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": crd.ENV_KAFKA_BOOTSTRAP, "value": config.kafka_bootstrap},
        # The store URI holds credentials: only a reference to the Secret goes into the Job. A
        # secretKeyRef names a Secret of the pod's own namespace: with the chart's
        # store.perNamespaceSecret that is each team's own MongoDB user (config.py).
        {"name": crd.ENV_STORE_URI, "valueFrom": {"secretKeyRef": {
            "name": config.store_secret, "key": config.store_secret_key}}},
        {"name": crd.ENV_DATABASE, "value": config.database_for(namespace)},
        {"name": crd.ENV_NAMESPACE, "value": namespace},
        # TensorFlow, Keras and matplotlib write caches under HOME; the root filesystem is read-only.
        {"name": "HOME", "value": SCRATCH_PATH},
        {"name": "MPLCONFIGDIR", "value": f"{SCRATCH_PATH}/matplotlib"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if run_name is not None:
        env.append({"name": crd.ENV_RUN_NAME, "value": run_name})
    if config.heartbeat_seconds is not None:
        env.append({"name": crd.ENV_HEARTBEAT_SECONDS, "value": f"{config.heartbeat_seconds:g}"})
    if config.tfio_librdkafka:
        env.append({"name": crd.ENV_TFIO_LIBRDKAFKA, "value": config.tfio_librdkafka})
    env += data_secret(data_secret_name)[1]
    return env


def _resources(component: str, override: Mapping[str, Any] | None) -> dict[str, Any]:
    return copy.deepcopy(dict(override if override is not None else DEFAULT_RESOURCES[component]))


def _job(*, owner: Owner, component: str, config: JobConfig, image: str | None, command: list[str],
         env: list[dict[str, Any]], resources: Mapping[str, Any] | None, policy: RunPolicy,
         job_spec: Mapping[str, Any], volumes: Volumes = Volumes(), read_only_volumes: bool = False,
         secret_name: str | None = None, scheduling: Scheduling = Scheduling()) -> dict[str, Any]:
    job_labels = labels(owner, component)
    indexed_completions = job_spec["completions"] if job_spec.get("completionMode") == "Indexed" else None
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [{
            "name": component,
            "image": image or config.image,
            "imagePullPolicy": config.image_pull_policy,
            "command": command,
            "env": env,
            "resources": _resources(component, resources),
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [{"name": SCRATCH_VOLUME, "mountPath": SCRATCH_PATH}],
            # The pipeline writes its one-line error to /dev/termination-log (cli.py); a container
            # that dies before it can (a crash, an OOM kill) leaves the tail of its log instead.
            # The operator copies the message into the CR's Failed condition and Event.
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }],
        "volumes": [{"name": SCRATCH_VOLUME, "emptyDir": {}}],
    }
    if config.service_account:
        pod_spec["serviceAccountName"] = config.service_account
    if scheduling.priority_class_name:
        pod_spec["priorityClassName"] = scheduling.priority_class_name
    env_from, secret_volumes, mounts = _secret_mounts(config)
    env_from += data_secret(secret_name)[0]
    container = pod_spec["containers"][0]
    if env_from:
        container["envFrom"] = env_from
    extra_volumes, extra_mounts = user_volumes(volumes, read_only=read_only_volumes)
    container["volumeMounts"] += mounts + extra_mounts
    pod_spec["volumes"] += secret_volumes + extra_volumes
    spec: dict[str, Any] = {
        "backoffLimit": policy.backoff_limit,
        "activeDeadlineSeconds": policy.active_deadline_seconds,
        "ttlSecondsAfterFinished": policy.ttl_seconds_after_finished,
        # Exit code 2 is "bad input" (contracts.md §1): retrying the same input cannot succeed.
        "podFailurePolicy": {"rules": [{
            "action": "FailIndex" if "completionMode" in job_spec else "FailJob",
            "onExitCodes": {"containerName": component, "operator": "In", "values": [crd.EXIT_BAD_INPUT]},
        }]},
        **job_spec,
        "template": {"metadata": {"labels": dict(job_labels)}, "spec": pod_spec},
    }
    if created_suspended(scheduling):
        spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(owner.name, component, indexed_completions),
            "namespace": owner.namespace,
            "labels": {**job_labels, **kueue_labels(scheduling)},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": spec,
    }


def topic(owner: Owner, spec: TrainingRunSpec) -> str:
    """The run's topic: spec.kafka.topic, or its own (tenancy.default_topic)."""
    return spec.kafka.topic or tenancy.default_topic(owner.namespace, owner.name)


def producer_job(owner: Owner, spec: TrainingRunSpec, run_name: str, config: JobConfig) -> dict[str, Any]:
    """The Job that streams the dataset's row range into Kafka and records the offsets."""
    command = [*PIPELINE_MODULE, "produce",
               "--data", spec.dataset.uri,
               "--skip", str(spec.dataset.skip),
               "--limit", str(spec.dataset.limit),
               "--topic", topic(owner, spec),
               "--partitions", str(spec.kafka.partitions),
               "--run-name", run_name]
    if spec.kafka.rows_per_message is not None:
        command += ["--rows-per-message", str(spec.kafka.rows_per_message)]
    return _job(owner=owner, component=crd.PRODUCER, config=config, image=spec.producer_image,
                command=command,
                env=merge_env(pipeline_env(config, owner.namespace, run_name, spec.dataset.secret_name), spec.env),
                resources=spec.producer_resources, policy=spec.run_policy,
                job_spec={"completions": 1, "parallelism": 1}, volumes=spec.volumes,
                secret_name=spec.dataset.secret_name, scheduling=spec.scheduling)


def trainer_job(owner: Owner, spec: TrainingRunSpec, run_name: str, config: JobConfig,
                parent_model_id: str | None = None) -> dict[str, Any]:
    """The Job that consumes exactly what the producer recorded, trains, and saves the model;
    with `parent_model_id` (spec.model.warmStart, resolved), it continues that model."""
    command = [*PIPELINE_MODULE, "train", "--run-name", run_name, "--reader", spec.reader]
    if spec.source is not None:  # offsets already in Kafka, checked whole by the trainer
        command += ["--offsets", spec.source.offsets_text]
    if spec.model.recipe is not None:  # None only with a warm start: the parent's recipe
        command += ["--recipe", spec.model.recipe]
    if parent_model_id is not None:
        command += ["--warm-start", parent_model_id]
    if spec.epochs is not None:
        command += ["--epochs", str(spec.epochs)]
    if spec.batch_size is not None:
        command += ["--batch-size", str(spec.batch_size)]
    if spec.model.learning_rate is not None:
        command += ["--learning-rate", repr(spec.model.learning_rate)]
    if spec.model.dropout is not None:
        command += ["--dropout", repr(spec.model.dropout)]
    if spec.model.hidden is not None:
        command += ["--hidden", ",".join(str(h) for h in spec.model.hidden)]
    # The trainer reads Kafka, not the dataset, but gets the same volumes and Secret: a pod of
    # the run sees what the run's spec names, as a TFJob's replicas share their pod template.
    return _job(owner=owner, component=crd.TRAINER, config=config, image=spec.trainer_image,
                command=command,
                env=merge_env(pipeline_env(config, owner.namespace, run_name, spec.dataset.secret_name), spec.env),
                resources=spec.trainer_resources, policy=spec.run_policy,
                job_spec={"completions": 1, "parallelism": 1}, volumes=spec.volumes,
                secret_name=spec.dataset.secret_name, scheduling=spec.scheduling)


def precision_env(spec: EvaluationRunSpec) -> list[dict[str, Any]]:
    """spec.precision and spec.allowBf16 as the evaluator's SUSY_PRECISION and SUSY_ALLOW_BF16 (set
    by the operator, so a user env entry of the same name does not override them)."""
    return [{"name": crd.ENV_PRECISION, "value": spec.precision},
            {"name": crd.ENV_ALLOW_BF16, "value": "true" if spec.allow_bf16 else "false"}]


def evaluator_job(owner: Owner, spec: EvaluationRunSpec, evaluation: str, model_id: str | Sequence[str],
                  config: JobConfig) -> dict[str, Any]:
    """One Indexed Job: pod i scores shard i (JOB_COMPLETION_INDEX) and upserts its result.

    `model_id`: the resolved id, or the ids of spec.models (each distinct id is passed once, in
    the order first named: every shard scores them all in one pass, plus spec.ensemble)."""
    ids = [model_id] if isinstance(model_id, str) else list(dict.fromkeys(model_id))
    models = [arg for i in ids for arg in ("--model", i)]
    if spec.ensemble is not None and len(ids) > 1:  # of one distinct model: that model, not scored twice
        models += ["--ensemble", spec.ensemble]
    command = [*PIPELINE_MODULE, "evaluate", *models, "--data", *spec.uris,
               "--evaluation", evaluation, "--shard-count", str(spec.shards),
               "--chunk-rows", str(spec.chunk_rows)]
    if spec.skip:
        command += ["--skip", str(spec.skip)]
    if spec.limit is not None:
        command += ["--limit", str(spec.limit)]
    if spec.stripe_rows is not None:
        command += ["--stripe-rows", str(spec.stripe_rows)]
    job_spec = {
        "completionMode": "Indexed",
        "completions": spec.shards,
        "parallelism": spec.effective_parallelism,
        # Each shard is retried on its own; one bad shard does not use up the others' retries.
        "backoffLimitPerIndex": spec.backoff_limit_per_index,
    }
    policy = dataclasses.replace(spec.run_policy,
                                 backoff_limit=spec.shards * (spec.backoff_limit_per_index + 1))
    return _job(owner=owner, component=crd.EVALUATOR, config=config, image=spec.image, command=command,
                env=merge_env(pipeline_env(config, owner.namespace, data_secret_name=spec.secret_name)
                              + precision_env(spec), spec.env),
                resources=spec.resources, policy=policy, job_spec=job_spec, volumes=spec.volumes,
                read_only_volumes=True, secret_name=spec.secret_name, scheduling=spec.scheduling)
