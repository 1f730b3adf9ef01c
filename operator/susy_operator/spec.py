"""Parse and validate TrainingRun / EvaluationRun specs into frozen dataclasses.

The CRD schema (manifests/crds/) already rejects most bad specs at the API server; this module
repeats those rules so that the operator never acts on a spec the schema would reject (a CRD
installed without CEL support, an object written before a schema change, the API emulator in
the tests). Defaults here equal the schema's `default:` values; tests/test_crds.py checks that.

Pure: no kopf, no Kubernetes client.
"""
from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

# Shared with the pipeline: pure constants, no TensorFlow or Kafka behind them.
from susy_pipeline.precision import EVALUATION_PRECISIONS
from susy_pipeline.redaction import echo
from susy_pipeline.schema import DEFAULT_CHUNK_ROWS, TOPIC_PATTERN

READERS: Final = ("confluent", "tfio", "kafka-python")
RECIPES: Final = ("seed", "tuned")
MODEL_ID_PATTERN: Final = re.compile(r"^[0-9a-f]{32}$")
# As the store's ALIAS_PATTERN (susy_pipeline/store/base.py) and the CRDs' alias fields.
ALIAS_NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
ENV_NAME_PATTERN: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
K8S_NAME_PATTERN: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
K8S_SUBDOMAIN_PATTERN: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
QUANTITY_PATTERN: Final = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")

# Schema defaults (kept equal to manifests/crds/*.yaml by tests/test_crds.py).
DEFAULT_SKIP: Final = 0
DEFAULT_LIMIT: Final = 10000
DEFAULT_PARTITIONS: Final = 3  # what the platform chart creates trainData with (kafka.topics)
DEFAULT_RECIPE: Final = "seed"
# confluent (librdkafka 2.16): it reads every Kafka the platform chart runs, Kafka 4 (KRaft) included,
# with default settings, and is the fastest reader (bench/README.md); tfio's librdkafka 1.5.0 stops at
# Kafka 3.9 (docs/deploy.md, "Kafka versions and the trainer's readers").
DEFAULT_READER: Final = "confluent"
DEFAULT_SHARDS: Final = 1
DEFAULT_BACKOFF_LIMIT: Final = 2
DEFAULT_BACKOFF_LIMIT_PER_INDEX: Final = 1
DEFAULT_ACTIVE_DEADLINE_SECONDS: Final = 21600
DEFAULT_TTL_SECONDS_AFTER_FINISHED: Final = 86400

MAX_PARTITIONS: Final = 64
MAX_SHARDS: Final = 1000
MAX_URIS: Final = 64
MAX_HIDDEN_LAYERS: Final = 8
MAX_VOLUMES: Final = 16
MAX_MODELS: Final = 8  # spec.models; the evaluator's own limit (susy_pipeline.evaluation.MAX_MODELS)
ENSEMBLES: Final = ("mean",)
PRECISIONS: Final = EVALUATION_PRECISIONS  # spec.precision: the evaluator's --precision
# auto, without spec.allowBf16, computes in fp32: the tallies stay what they were.
DEFAULT_PRECISION: Final = "auto"

# Volume sources a CR may name (Kubernetes pod-spec shape). A PersistentVolumeClaim is always
# allowed; the others reach into the node (hostPath) or into cluster configuration (configMap),
# so the operator refuses them unless its SUSY_ALLOWED_VOLUME_TYPES names them.
VOLUME_TYPES: Final = ("persistentVolumeClaim", "configMap", "hostPath")
ALWAYS_ALLOWED_VOLUME_TYPES: Final = frozenset({"persistentVolumeClaim"})
# Volume names and mount paths the operator's own volumes use (builders.py).
RESERVED_VOLUME_NAMES: Final = frozenset({"scratch", "kafka-client", "store-ca"})
# /tmp is the pods' scratch emptyDir (HOME, caches); /etc/susy holds the operator's Secret mounts.
RESERVED_MOUNT_PATHS: Final = ("/tmp", "/etc/susy")
MOUNT_PATH_PATTERN: Final = re.compile(r"^(/[^/\x00]+)+/?$")


class SpecError(ValueError):
    """A spec the operator cannot run. `problems` lists every rule it breaks, in field order."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


@dataclasses.dataclass(frozen=True)
class RunPolicy:
    """Job lifecycle knobs, applied to every Job of a run (like Kubeflow's RunPolicy)."""
    backoff_limit: int = DEFAULT_BACKOFF_LIMIT
    active_deadline_seconds: int = DEFAULT_ACTIVE_DEADLINE_SECONDS
    ttl_seconds_after_finished: int = DEFAULT_TTL_SECONDS_AFTER_FINISHED


@dataclasses.dataclass(frozen=True)
class Scheduling:
    """How a run shares its cluster (both kinds): the fields that may change mid-run are `suspend`
    and `ttl_seconds_after_finished`; the CRD keeps the others immutable."""
    # suspend: spec.suspend; the run's Jobs are created suspended, or the running one is suspended.
    suspend: bool = False
    # queue_name: spec.queueName or the CR's kueue.x-k8s.io/queue-name label: a Kueue LocalQueue.
    queue_name: str | None = None
    # priority_class_name: spec.priorityClassName, every pod's priorityClassName.
    priority_class_name: str | None = None
    # workload_priority_class_name: spec.workloadPriorityClassName or the CR's
    # kueue.x-k8s.io/priority-class label: a Kueue WorkloadPriorityClass, labelled on queued Jobs.
    workload_priority_class_name: str | None = None
    # ttl_seconds_after_finished: spec.ttlSecondsAfterFinished, the CR's own; None: the operator's default.
    ttl_seconds_after_finished: int | None = None

    @property
    def queued(self) -> bool:
        return self.queue_name is not None


@dataclasses.dataclass(frozen=True)
class Dataset:
    uri: str
    skip: int = DEFAULT_SKIP
    limit: int = DEFAULT_LIMIT
    # secret_name: a Secret whose keys become the pods' environment (object-storage credentials).
    secret_name: str | None = None


@dataclasses.dataclass(frozen=True)
class Volumes:
    """User volumes (pod-spec `volumes`) and their mounts (container `volumeMounts`), as given."""
    volumes: tuple[Mapping[str, Any], ...] = ()
    mounts: tuple[Mapping[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class Kafka:
    # topic: None means the run's own (tenancy.default_topic: susy-<namespace>-<name>).
    topic: str | None = None
    partitions: int = DEFAULT_PARTITIONS
    rows_per_message: int | None = None


@dataclasses.dataclass(frozen=True)
class ModelReference:
    """Exactly one of the four is set."""
    id: str | None = None
    timestamp: str | None = None
    training_run: str | None = None
    alias: str | None = None

    @property
    def store_ref(self) -> str:
        """The reference in the pipeline's syntax (contracts.md §1), for ids, timestamps and aliases."""
        if self.id is not None:
            return self.id
        if self.timestamp is not None:
            return self.timestamp
        if self.alias is not None:
            return f"alias:{self.alias}"
        raise ValueError("a TrainingRun reference resolves through the TrainingRun's status")

    @property
    def text(self) -> str:
        """The reference as status shows it: the id, the timestamp, `trainingRun:NAME` or `alias:NAME`."""
        if self.training_run is not None:
            return f"trainingRun:{self.training_run}"
        return self.store_ref

    def describe(self) -> str:
        if self.id is not None:
            return f"model id {self.id}"
        if self.timestamp is not None:
            return f"the newest model at or before {self.timestamp}"
        if self.alias is not None:
            return f"the model of alias {self.alias}"
        return f"the latest model of TrainingRun {self.training_run}"


@dataclasses.dataclass(frozen=True)
class ModelParams:
    """Hyper-parameters; None means "the recipe's value" (the seed model by default). With
    `warm_start` (the parent model), recipe None means the parent's settings."""
    recipe: str | None = DEFAULT_RECIPE
    hidden: tuple[int, ...] | None = None
    learning_rate: float | None = None
    dropout: float | None = None
    warm_start: ModelReference | None = None


@dataclasses.dataclass(frozen=True)
class KafkaSource:
    """spec.source.kafka: offsets already in Kafka, read by the trainer alone (no producer step).
    `ranges` is (partition, start, end) per partition, end exclusive; a start of None is where
    the warm-start parent stopped on that partition (its lineage)."""
    topic: str
    ranges: tuple[tuple[int, int | None, int], ...]

    @property
    def offsets_text(self) -> str:
        """The trainer's `--offsets` (susy_pipeline.kafka_offsets: TOPIC:P=START-END, START `parent`)."""
        return f"{self.topic}:" + ",".join(f"{p}={'parent' if s is None else s}-{e}" for p, s, e in self.ranges)


@dataclasses.dataclass(frozen=True)
class TrainingRunSpec:
    dataset: Dataset
    kafka: Kafka = Kafka()
    model: ModelParams = ModelParams()
    epochs: int | None = None
    batch_size: int | None = None
    reader: str = DEFAULT_READER
    producer_image: str | None = None
    trainer_image: str | None = None
    producer_resources: Mapping[str, Any] | None = None
    trainer_resources: Mapping[str, Any] | None = None
    env: tuple[tuple[str, str], ...] = ()
    run_policy: RunPolicy = RunPolicy()
    volumes: Volumes = Volumes()
    scheduling: Scheduling = Scheduling()
    # spec.source.kafka: train on these offsets; None: the producer writes spec.dataset first.
    source: KafkaSource | None = None


@dataclasses.dataclass(frozen=True)
class EvaluationRunSpec:
    model: ModelReference  # spec.model, or the first of spec.models
    uris: tuple[str, ...]
    skip: int = DEFAULT_SKIP
    # limit: rows scored after `skip`; None scores every row to the end of the inputs.
    limit: int | None = None
    secret_name: str | None = None
    shards: int = DEFAULT_SHARDS
    parallelism: int | None = None
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    stripe_rows: int | None = None
    backoff_limit_per_index: int = DEFAULT_BACKOFF_LIMIT_PER_INDEX
    image: str | None = None
    resources: Mapping[str, Any] | None = None
    env: tuple[tuple[str, str], ...] = ()
    run_policy: RunPolicy = RunPolicy()
    volumes: Volumes = Volumes()
    # spec.models (1 to 8) when given; empty with spec.model. `references` is either, as a list.
    models: tuple[ModelReference, ...] = ()
    ensemble: str | None = None
    precision: str = DEFAULT_PRECISION
    allow_bf16: bool = False
    scheduling: Scheduling = Scheduling()

    @property
    def references(self) -> tuple[ModelReference, ...]:
        return self.models or (self.model,)

    @property
    def effective_parallelism(self) -> int:
        return self.shards if self.parallelism is None else self.parallelism


class _Reader:
    """Collects every problem of a spec instead of stopping at the first one."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.problems: list[str] = []

    def section(self, data: Mapping[str, Any], key: str, *, required: bool = False) -> Mapping[str, Any]:
        value = data.get(key)
        if value is None:
            if required:
                self.problems.append(f"{self.root}.{key} is required")
            return {}
        if not isinstance(value, Mapping):
            self.problems.append(f"{self.root}.{key} must be an object")
            return {}
        return value

    def integer(self, data: Mapping[str, Any], path: str, key: str, default: int | None, *,
                minimum: int, maximum: int | None = None) -> int | None:
        value = data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.problems.append(f"{path}.{key} must be an integer, got {echo(value)}")
            return default
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            self.problems.append(f"{path}.{key} must be {bound}, got {echo(value)}")
            return default
        return value

    def number(self, data: Mapping[str, Any], path: str, key: str, *, exclusive_min: float,
               maximum: float) -> float | None:
        value = data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.problems.append(f"{path}.{key} must be a number, got {echo(value)}")
            return None
        if not exclusive_min < value <= maximum:
            self.problems.append(f"{path}.{key} must be in ({exclusive_min}, {maximum}], got {echo(value)}")
            return None
        return float(value)

    def string(self, data: Mapping[str, Any], path: str, key: str, default: str | None = None, *,
               required: bool = False, choices: Sequence[str] | None = None,
               pattern: re.Pattern[str] | None = None) -> str | None:
        value = data.get(key, default)
        if value is None or value == "":
            if required:
                self.problems.append(f"{path}.{key} is required")
            return default if value is None else None
        if not isinstance(value, str):
            self.problems.append(f"{path}.{key} must be a string, got {echo(value)}")
            return default
        if choices is not None and value not in choices:
            self.problems.append(f"{path}.{key} must be one of {', '.join(choices)}, got {echo(value)}")
            return default
        if pattern is not None and not pattern.match(value):
            self.problems.append(f"{path}.{key} {echo(value)} does not match {pattern.pattern}")
            return default
        return value

    def resources(self, data: Mapping[str, Any], path: str, key: str) -> Mapping[str, Any] | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping) or set(value) - {"requests", "limits"}:
            self.problems.append(f"{path}.{key} must be an object with requests and/or limits")
            return None
        for part in ("requests", "limits"):
            for name, quantity in (value.get(part) or {}).items():
                if isinstance(quantity, bool) or not QUANTITY_PATTERN.match(str(quantity)):
                    self.problems.append(f"{path}.{key}.{part}.{name}: {echo(quantity)} is not a quantity")
        return value

    def env(self, data: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        from susy_operator import crd  # local: keeps the import graph of this pure module flat

        items = data.get("env") or []
        if not isinstance(items, list):
            self.problems.append(f"{self.root}.env must be a list")
            return ()
        result: dict[str, str] = {}
        for i, item in enumerate(items):
            name = item.get("name") if isinstance(item, Mapping) else None
            value = item.get("value", "") if isinstance(item, Mapping) else None
            if not isinstance(name, str) or not ENV_NAME_PATTERN.match(name) or not isinstance(value, str):
                self.problems.append(f"{self.root}.env[{i}] must be {{name, value}} with a valid name")
            elif name in crd.RESERVED_ENV:
                self.problems.append(f"{self.root}.env[{i}].name {name} is set by the operator")
            else:
                result[name] = value
        return tuple(result.items())

    def volumes(self, data: Mapping[str, Any], allowed_types: frozenset[str]) -> Volumes:
        """spec.volumes and spec.volumeMounts: one source each, known names, no reserved path."""
        volumes_raw = data.get("volumes") or []
        mounts_raw = data.get("volumeMounts") or []
        volumes: list[Mapping[str, Any]] = []
        names: set[str] = set()
        if not isinstance(volumes_raw, list) or len(volumes_raw) > MAX_VOLUMES:
            self.problems.append(f"{self.root}.volumes must be a list of at most {MAX_VOLUMES} volumes")
            volumes_raw = []
        allowed = ALWAYS_ALLOWED_VOLUME_TYPES | allowed_types
        for i, volume in enumerate(volumes_raw):
            path = f"{self.root}.volumes[{i}]"
            name = volume.get("name") if isinstance(volume, Mapping) else None
            if not isinstance(name, str) or not K8S_NAME_PATTERN.match(name) or len(name) > 63:
                self.problems.append(f"{path}.name must be a DNS label")
                continue
            if name in RESERVED_VOLUME_NAMES:
                self.problems.append(f"{path}.name {name} is a volume of the operator's own")
                continue
            if name in names:
                self.problems.append(f"{path}.name {name} is used twice")
                continue
            sources = [key for key in volume if key != "name"]
            if len(sources) != 1 or sources[0] not in VOLUME_TYPES or not isinstance(volume[sources[0]], Mapping):
                self.problems.append(f"{path} must have exactly one source: {', '.join(VOLUME_TYPES)}")
                continue
            kind = sources[0]
            if kind not in allowed:
                self.problems.append(
                    f"{path}.{kind}: volume type {kind} is not allowed by this operator (allowed: "
                    f"{', '.join(t for t in VOLUME_TYPES if t in allowed)}; its setting SUSY_ALLOWED_VOLUME_TYPES)")
                continue
            names.add(name)
            volumes.append(volume)
        mounts: list[Mapping[str, Any]] = []
        if not isinstance(mounts_raw, list) or len(mounts_raw) > MAX_VOLUMES:
            self.problems.append(f"{self.root}.volumeMounts must be a list of at most {MAX_VOLUMES} mounts")
            mounts_raw = []
        declared = {v.get("name") for v in volumes_raw if isinstance(v, Mapping)}
        paths: set[str] = set()
        for i, mount in enumerate(mounts_raw):
            path = f"{self.root}.volumeMounts[{i}]"
            if not isinstance(mount, Mapping):
                self.problems.append(f"{path} must be an object")
                continue
            if mount.get("name") not in declared:
                self.problems.append(f"{path}.name {echo(mount.get('name'))} names no volume in {self.root}.volumes")
                continue
            mount_path = mount.get("mountPath")
            if not isinstance(mount_path, str) or not MOUNT_PATH_PATTERN.match(mount_path) or any(
                    part in (".", "..") for part in mount_path.split("/")):
                self.problems.append(f"{path}.mountPath must be an absolute path without . or .., got {echo(mount_path)}")
                continue
            normal = mount_path.rstrip("/")
            reserved = [r for r in RESERVED_MOUNT_PATHS if normal == r or normal.startswith(r + "/")]
            if reserved:
                self.problems.append(f"{path}.mountPath {mount_path} is under {reserved[0]}, which the operator mounts")
                continue
            if normal in paths:
                self.problems.append(f"{path}.mountPath {mount_path} is mounted twice")
                continue
            paths.add(normal)
            if mount.get("name") in names:
                mounts.append(mount)
        return Volumes(volumes=tuple(volumes), mounts=tuple(mounts))

    def run_policy(self, data: Mapping[str, Any]) -> RunPolicy:
        section = self.section(data, "runPolicy")
        path = f"{self.root}.runPolicy"
        return RunPolicy(
            backoff_limit=self.integer(section, path, "backoffLimit", DEFAULT_BACKOFF_LIMIT,
                                       minimum=0, maximum=20) or 0,
            active_deadline_seconds=self.integer(section, path, "activeDeadlineSeconds",
                                                 DEFAULT_ACTIVE_DEADLINE_SECONDS, minimum=60) or 60,
            ttl_seconds_after_finished=self.integer(section, path, "ttlSecondsAfterFinished",
                                                    DEFAULT_TTL_SECONDS_AFTER_FINISHED, minimum=0) or 0,
        )

    def boolean(self, data: Mapping[str, Any], path: str, key: str) -> bool:
        value = data.get(key, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            self.problems.append(f"{path}.{key} must be true or false, got {echo(value)}")
            return False
        return value

    def spec_or_label(self, data: Mapping[str, Any], key: str, labels: Mapping[str, str], label: str, *,
                      max_length: int) -> str | None:
        """spec.KEY, or the CR's label LABEL when the spec leaves it out; both given must agree."""
        value = self.string(data, self.root, key, pattern=K8S_NAME_PATTERN)
        labelled = labels.get(label) or None
        if value is not None and len(value) > max_length:
            self.problems.append(f"{self.root}.{key} must be at most {max_length} characters (a label value)")
            return None
        if labelled is not None and value is not None and labelled != value:
            self.problems.append(f"{self.root}.{key} {echo(value)} and the label {label}={echo(labelled)} disagree: "
                                 "name it one way")
            return None
        if value is None and labelled is not None and not K8S_NAME_PATTERN.match(labelled):
            self.problems.append(f"metadata.labels[{label}] {echo(labelled)} does not match {K8S_NAME_PATTERN.pattern}")
            return None
        return value or labelled

    def scheduling(self, data: Mapping[str, Any], labels: Mapping[str, str]) -> Scheduling:
        from susy_operator import crd  # local: keeps the import graph of this pure module flat

        return Scheduling(
            suspend=self.boolean(data, self.root, "suspend"),
            queue_name=self.spec_or_label(data, "queueName", labels, crd.LABEL_KUEUE_QUEUE,
                                          max_length=crd.MAX_NAME),
            priority_class_name=self.string(data, self.root, "priorityClassName", pattern=K8S_SUBDOMAIN_PATTERN),
            workload_priority_class_name=self.spec_or_label(data, "workloadPriorityClassName", labels,
                                                            crd.LABEL_KUEUE_PRIORITY, max_length=crd.MAX_NAME),
            ttl_seconds_after_finished=self.integer(data, self.root, "ttlSecondsAfterFinished", None, minimum=0),
        )

    def model_reference(self, data: Mapping[str, Any], path: str, *, present: bool) -> ModelReference:
        """A model named exactly one way: id, timestamp, trainingRun or alias (`present`: the section
        was given as an object, so naming none is a problem too)."""
        named = [key for key in ("id", "timestamp", "trainingRun", "alias") if data.get(key) not in (None, "")]
        if present and len(named) != 1:
            self.problems.append(f"{path} must name the model exactly one way (id, timestamp, trainingRun "
                                 f"or alias), got {', '.join(named) if named else 'none'}")
        model_id = self.string(data, path, "id", pattern=MODEL_ID_PATTERN)
        timestamp = self.string(data, path, "timestamp")
        if timestamp is not None:
            try:
                datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
            except ValueError:
                self.problems.append(f"{path}.timestamp {echo(timestamp)} is not an RFC 3339 date-time")
        training_run = self.string(data, path, "trainingRun", pattern=K8S_NAME_PATTERN)
        alias = self.string(data, path, "alias", pattern=ALIAS_NAME_PATTERN)
        return ModelReference(id=model_id, timestamp=timestamp, training_run=training_run, alias=alias)

    def model_params(self, model: Mapping[str, Any], path: str, *, allow_warm_start: bool = True) -> ModelParams:
        """spec.model: the recipe and what overrides it; a warm start (`warmStart`) if allowed."""
        hidden_raw = model.get("hidden")
        hidden: tuple[int, ...] | None = None
        if hidden_raw is not None:
            if (not isinstance(hidden_raw, list) or not 1 <= len(hidden_raw) <= MAX_HIDDEN_LAYERS
                    or not all(isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= 4096 for h in hidden_raw)):
                self.problems.append(f"{path}.hidden must be 1-{MAX_HIDDEN_LAYERS} layer widths in 1..4096")
            else:
                hidden = tuple(hidden_raw)
        warm = model.get("warmStart")
        warm_start = None
        if warm is not None and not allow_warm_start:
            self.problems.append(f"{path}.warmStart is not a field here")
        elif warm is not None and not isinstance(warm, Mapping):
            self.problems.append(f"{path}.warmStart must be an object")
        elif warm is not None:
            warm_start = self.model_reference(warm, f"{path}.warmStart", present=True)
        # A warm start takes the parent's recipe unless one is named (the CRD gives recipe no default,
        # so that an unset one reaches here as unset).
        recipe = self.string(model, path, "recipe", None, choices=RECIPES)
        return ModelParams(
            recipe=recipe or (None if warm_start else DEFAULT_RECIPE),
            hidden=hidden,
            learning_rate=self.number(model, path, "learningRate", exclusive_min=0.0, maximum=1.0),
            dropout=self.number(model, path, "dropout", exclusive_min=-1e-12, maximum=0.9),
            warm_start=warm_start,
        )

    def kafka_source(self, source: Mapping[str, Any], has_warm_start: bool) -> KafkaSource | None:
        """spec.source.kafka: a topic and one offset range per partition."""
        path = f"{self.root}.source.kafka"
        kafka = source.get("kafka")
        if not isinstance(kafka, Mapping):
            self.problems.append(f"{path} is required in {self.root}.source (a topic and its offsets)")
            return None
        topic = self.string(kafka, path, "topic", required=True, pattern=TOPIC_PATTERN)
        entries = kafka.get("offsets")
        if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_PARTITIONS:
            self.problems.append(f"{path}.offsets must list 1 to {MAX_PARTITIONS} partitions")
            return None
        ranges: list[tuple[int, int | None, int]] = []
        for i, entry in enumerate(entries):
            where = f"{path}.offsets[{i}]"
            if not isinstance(entry, Mapping):
                self.problems.append(f"{where} must be an object")
                continue
            partition = self.integer(entry, where, "partition", None, minimum=0)
            start = self.integer(entry, where, "start", None, minimum=0)
            end = self.integer(entry, where, "end", None, minimum=0)
            if partition is None or end is None:
                self.problems.append(f"{where} needs partition and end")
                continue
            if start is None and not has_warm_start:
                self.problems.append(f"{where}.start may be left out only with spec.model.warmStart "
                                     "(it then starts where that model stopped)")
            elif start is not None and end < start:
                self.problems.append(f"{where}: end {end} is before start {start}")
            if partition in {p for p, _, _ in ranges}:
                self.problems.append(f"{where}.partition {partition} is given twice")
            ranges.append((partition, start, end))
        if topic is None or not ranges:
            return None
        return KafkaSource(topic, tuple(sorted(ranges)))

    def done(self) -> None:
        if self.problems:
            raise SpecError(self.problems)


def parse_training_run(spec: Mapping[str, Any], *,
                       allowed_volume_types: frozenset[str] = ALWAYS_ALLOWED_VOLUME_TYPES,
                       labels: Mapping[str, str] | None = None) -> TrainingRunSpec:
    """Validate a TrainingRun spec; raise SpecError naming every problem.

    `allowed_volume_types`: the volume sources the operator accepts besides persistentVolumeClaim.
    `labels`: the CR's labels (Kueue's queue-name and priority-class labels stand for the fields).
    """
    r = _Reader("spec")
    source_raw = r.section(spec, "source")
    if source_raw and spec.get("dataset") is not None:
        r.problems.append("spec.dataset and spec.source are both given: a TrainingRun reads a file through its "
                          "producer (spec.dataset) or offsets already in Kafka (spec.source), not both")
    ds = r.section(spec, "dataset", required=not source_raw)
    kafka = r.section(spec, "kafka")
    model = r.section(spec, "model")
    images = r.section(spec, "images")
    resources = r.section(spec, "resources")

    uri = r.string(ds, "spec.dataset", "uri", required=True) if ds else None
    dataset = Dataset(
        uri=uri or "",
        skip=r.integer(ds, "spec.dataset", "skip", DEFAULT_SKIP, minimum=0) or 0,
        limit=r.integer(ds, "spec.dataset", "limit", DEFAULT_LIMIT, minimum=1) or DEFAULT_LIMIT,
        secret_name=r.string(ds, "spec.dataset", "secretName", pattern=K8S_SUBDOMAIN_PATTERN),
    )
    params = r.model_params(model, "spec.model")
    source = r.kafka_source(source_raw, params.warm_start is not None) if source_raw else None
    parsed = TrainingRunSpec(
        dataset=dataset,
        kafka=Kafka(
            topic=r.string(kafka, "spec.kafka", "topic", pattern=TOPIC_PATTERN),
            partitions=r.integer(kafka, "spec.kafka", "partitions", DEFAULT_PARTITIONS,
                                 minimum=1, maximum=MAX_PARTITIONS) or DEFAULT_PARTITIONS,
            rows_per_message=r.integer(kafka, "spec.kafka", "rowsPerMessage", None, minimum=1, maximum=10000),
        ),
        model=params,
        epochs=r.integer(spec, "spec", "epochs", None, minimum=1, maximum=1000),
        batch_size=r.integer(spec, "spec", "batchSize", None, minimum=1, maximum=65536),
        reader=r.string(spec, "spec", "reader", DEFAULT_READER, choices=READERS) or DEFAULT_READER,
        producer_image=r.string(images, "spec.images", "producer"),
        trainer_image=r.string(images, "spec.images", "trainer"),
        producer_resources=r.resources(resources, "spec.resources", "producer"),
        trainer_resources=r.resources(resources, "spec.resources", "trainer"),
        env=r.env(spec),
        run_policy=r.run_policy(spec),
        volumes=r.volumes(spec, allowed_volume_types),
        scheduling=r.scheduling(spec, labels or {}),
        source=source,
    )
    r.done()
    return parsed


def parse_evaluation_run(spec: Mapping[str, Any], *,
                         allowed_volume_types: frozenset[str] = ALWAYS_ALLOWED_VOLUME_TYPES,
                         labels: Mapping[str, str] | None = None) -> EvaluationRunSpec:
    """Validate an EvaluationRun spec; raise SpecError naming every problem (`labels`: as for
    parse_training_run)."""
    r = _Reader("spec")
    models_raw = spec.get("models")
    if models_raw is not None and spec.get("model") is not None:
        r.problems.append("spec.model and spec.models are both given: name the models one way")
    model = r.section(spec, "model", required=models_raw is None)
    ds = r.section(spec, "dataset", required=True)

    reference = r.model_reference(model, "spec.model", present=isinstance(spec.get("model"), Mapping))
    models: list[ModelReference] = []
    if models_raw is not None:
        if not isinstance(models_raw, list) or not 1 <= len(models_raw) <= MAX_MODELS:
            r.problems.append(f"spec.models must list 1 to {MAX_MODELS} models")
        else:
            for i, item in enumerate(models_raw):
                if not isinstance(item, Mapping):
                    r.problems.append(f"spec.models[{i}] must be an object")
                    continue
                models.append(r.model_reference(item, f"spec.models[{i}]", present=True))
    ensemble = r.string(spec, "spec", "ensemble", choices=ENSEMBLES)
    if ensemble is not None and len(models) < 2:
        r.problems.append("spec.ensemble needs at least two models in spec.models")

    uris_raw = ds.get("uris") if ds else None
    uris: tuple[str, ...] = ()
    if ds:
        if (not isinstance(uris_raw, list) or not 1 <= len(uris_raw) <= MAX_URIS
                or not all(isinstance(u, str) and u for u in uris_raw)):
            r.problems.append(f"spec.dataset.uris must list 1-{MAX_URIS} non-empty file URIs or globs")
        else:
            uris = tuple(uris_raw)

    shards = r.integer(spec, "spec", "shards", DEFAULT_SHARDS, minimum=1, maximum=MAX_SHARDS) or DEFAULT_SHARDS
    parallelism = r.integer(spec, "spec", "parallelism", None, minimum=1, maximum=MAX_SHARDS)
    if parallelism is not None and isinstance(spec.get("shards", DEFAULT_SHARDS), int) and parallelism > shards:
        r.problems.append(f"spec.parallelism ({parallelism}) must not exceed spec.shards ({shards})")
    resources = r.resources(spec, "spec", "resources")
    parsed = EvaluationRunSpec(
        model=models[0] if models else reference,
        models=tuple(models),
        ensemble=ensemble,
        uris=uris,
        skip=r.integer(ds, "spec.dataset", "skip", DEFAULT_SKIP, minimum=0) or 0,
        limit=r.integer(ds, "spec.dataset", "limit", None, minimum=1),
        secret_name=r.string(ds, "spec.dataset", "secretName", pattern=K8S_SUBDOMAIN_PATTERN),
        shards=shards,
        parallelism=parallelism,
        chunk_rows=r.integer(spec, "spec", "chunkRows", DEFAULT_CHUNK_ROWS, minimum=1, maximum=10_000_000)
        or DEFAULT_CHUNK_ROWS,
        precision=r.string(spec, "spec", "precision", DEFAULT_PRECISION, choices=PRECISIONS) or DEFAULT_PRECISION,
        allow_bf16=r.boolean(spec, "spec", "allowBf16"),
        stripe_rows=r.integer(spec, "spec", "stripeRows", None, minimum=1, maximum=10_000_000),
        backoff_limit_per_index=r.integer(spec, "spec", "backoffLimitPerIndex", DEFAULT_BACKOFF_LIMIT_PER_INDEX,
                                          minimum=0, maximum=10) or 0,
        image=r.string(spec, "spec", "image"),
        resources=resources,
        env=r.env(spec),
        run_policy=r.run_policy(spec),
        volumes=r.volumes(spec, allowed_volume_types),
        scheduling=r.scheduling(spec, labels or {}),
    )
    r.done()
    return parsed


def run_name(namespace: str, name: str, uid: str) -> str:
    """The store key of one CR instance: a re-created CR (new uid) never sees an old record."""
    return f"{namespace}.{name}.{uid[:8]}"


# ContinualTraining (manifests/crds/continualtrainings.yaml). Defaults equal the schema's.
DEFAULT_ROWS_PER_MESSAGE: Final = 1
DEFAULT_HISTORY_LIMIT: Final = 5
DEFAULT_METRIC: Final = "auc"
CONTINUAL_METRICS: Final = ("auc", "accuracy", "logLoss")
ALIAS_PATTERN: Final = re.compile(r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$")
MAX_CONTINUAL_NAME: Final = 50  # the children are <name>-g<N>-train / -eval, within 63 characters


@dataclasses.dataclass(frozen=True)
class HeldOutSet:
    uris: tuple[str, ...]
    skip: int = DEFAULT_SKIP
    limit: int | None = None
    secret_name: str | None = None


@dataclasses.dataclass(frozen=True)
class ContinualTrainingSpec:
    topic: str
    evaluation: HeldOutSet
    alias: str
    every_rows: int | None = None
    every_seconds: int | None = None
    rows_per_message: int = DEFAULT_ROWS_PER_MESSAGE
    model: ModelParams = ModelParams()
    epochs: int | None = None
    batch_size: int | None = None
    reader: str = DEFAULT_READER
    metric: str = DEFAULT_METRIC
    margin: float = 0.0
    shards: int = DEFAULT_SHARDS
    history_limit: int = DEFAULT_HISTORY_LIMIT
    suspend: bool = False
    env: tuple[tuple[str, str], ...] = ()
    # queueName, priorityClassName and workloadPriorityClassName, passed to every generation's
    # TrainingRun and EvaluationRun (its own suspend and ttl are not: they are this resource's).
    scheduling: Scheduling = Scheduling()


def parse_continual_training(spec: Mapping[str, Any], *,
                             labels: Mapping[str, str] | None = None) -> ContinualTrainingSpec:
    """Validate a ContinualTraining spec; raise SpecError naming every problem (`labels`: as for
    parse_training_run)."""
    r = _Reader("spec")
    kafka = r.section(spec, "kafka", required=True)
    trigger = r.section(spec, "trigger", required=True)
    evaluation = r.section(spec, "evaluation", required=True)
    ds = r.section(evaluation, "dataset") if evaluation else {}
    if evaluation and not ds:
        r.problems.append("spec.evaluation.dataset is required (the held-out set)")
    uris = ds.get("uris") if ds else None
    if ds and (not isinstance(uris, list) or not 1 <= len(uris) <= MAX_URIS
               or not all(isinstance(u, str) and u for u in uris)):
        r.problems.append(f"spec.evaluation.dataset.uris must list 1-{MAX_URIS} non-empty file URIs or globs")
        uris = []
    every_rows = r.integer(trigger, "spec.trigger", "everyRows", None, minimum=1)
    every_seconds = r.integer(trigger, "spec.trigger", "everySeconds", None, minimum=1)
    if isinstance(spec.get("trigger"), Mapping) and every_rows is None and every_seconds is None:
        r.problems.append("spec.trigger needs everyRows, everySeconds or both")
    margin = evaluation.get("margin", 0) if evaluation else 0
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin <= 1:
        r.problems.append(f"spec.evaluation.margin must be a number in [0, 1], got {margin!r}")
        margin = 0
    model = r.section(spec, "model")
    params = r.model_params(model, "spec.model", allow_warm_start=False)
    parsed = ContinualTrainingSpec(
        topic=r.string(kafka, "spec.kafka", "topic", required=True, pattern=TOPIC_PATTERN) or "",
        rows_per_message=r.integer(kafka, "spec.kafka", "rowsPerMessage", DEFAULT_ROWS_PER_MESSAGE,
                                   minimum=1, maximum=10000) or DEFAULT_ROWS_PER_MESSAGE,
        every_rows=every_rows,
        every_seconds=every_seconds,
        model=params,
        epochs=r.integer(spec, "spec", "epochs", None, minimum=1, maximum=1000),
        batch_size=r.integer(spec, "spec", "batchSize", None, minimum=1, maximum=65536),
        reader=r.string(spec, "spec", "reader", DEFAULT_READER, choices=READERS) or DEFAULT_READER,
        evaluation=HeldOutSet(
            uris=tuple(uris or ()),
            skip=r.integer(ds, "spec.evaluation.dataset", "skip", DEFAULT_SKIP, minimum=0) or 0,
            limit=r.integer(ds, "spec.evaluation.dataset", "limit", None, minimum=1),
            secret_name=r.string(ds, "spec.evaluation.dataset", "secretName", pattern=K8S_SUBDOMAIN_PATTERN),
        ),
        metric=r.string(evaluation, "spec.evaluation", "metric", DEFAULT_METRIC, choices=CONTINUAL_METRICS)
        or DEFAULT_METRIC,
        margin=float(margin),
        shards=r.integer(evaluation, "spec.evaluation", "shards", DEFAULT_SHARDS, minimum=1, maximum=MAX_SHARDS)
        or DEFAULT_SHARDS,
        alias=r.string(spec, "spec", "alias", required=True, pattern=ALIAS_PATTERN) or "",
        history_limit=r.integer(spec, "spec", "historyLimit", DEFAULT_HISTORY_LIMIT, minimum=1, maximum=100)
        or DEFAULT_HISTORY_LIMIT,
        suspend=r.boolean(spec, "spec", "suspend"),
        env=r.env(spec),
        scheduling=dataclasses.replace(r.scheduling(spec, labels or {}), suspend=False,
                                       ttl_seconds_after_finished=None),
    )
    r.done()
    return parsed
