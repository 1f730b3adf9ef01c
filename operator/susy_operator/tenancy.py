"""What a CR author may reach, decided by the operator's settings (docs/deploy.md, "Multi-tenancy").

Anyone allowed to create a TrainingRun or EvaluationRun in a namespace gets Jobs that run with the
operator's connection Secrets (the store URI, the Kafka client's credentials). So the operator,
not the CR, decides which images run beside those credentials, which environment variables may
change how the image behaves, which Secrets and PersistentVolumeClaims a run may mount and which
local paths its dataset may name. Each refusal names the CR field at fault and the operator setting
(chart value and environment variable) that would allow it, where one does.

Pure: no kopf, no Kubernetes client. Whether a Secret or claim carries the allow label is read by
the caller (handlers, through k8s.read_labels) and passed in as a function.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from susy_operator import crd
from susy_operator.spec import EvaluationRunSpec, SpecError, TrainingRunSpec, Volumes

# The label a namespace's owner puts on a Secret or PersistentVolumeClaim to let runs of that
# namespace use it (spec.dataset.secretName, spec.volumes[].persistentVolumeClaim.claimName).
LABEL_ALLOW_RUNS: Final = f"{crd.GROUP}/allow-runs"

# The settings, as a refusal names them: (chart value, operator environment variable).
SETTING_IMAGES: Final = ("tenancy.allowedImages", "SUSY_ALLOWED_IMAGES")
SETTING_ENV: Final = ("tenancy.allowedEnv", "SUSY_ALLOWED_ENV")
SETTING_SECRETS: Final = ("tenancy.allowedSecrets", "SUSY_ALLOWED_SECRETS")
SETTING_CLAIMS: Final = ("tenancy.allowedClaims", "SUSY_ALLOWED_CLAIMS")

# Variables no CR may set, whatever the settings: each changes what the image runs or where its
# credentials go, or replaces what the operator sets.
#   LD_*        the dynamic loader: LD_PRELOAD / LD_AUDIT / LD_LIBRARY_PATH load any shared object
#   GLIBC_*, MALLOC_*, GCONV_PATH, LOCPATH, NLSPATH
#               glibc tunables (GLIBC_TUNABLES: CVE-2023-4911), allocator hooks, and the paths from
#               which glibc loads iconv modules (shared objects) and locale data
#   PYTHON*     PYTHONPATH, PYTHONSTARTUP, PYTHONHOME, PYTHONWARNINGS (imports the category's module)
#   TF_*, XLA_* TensorFlow and XLA: plugin and kernel library paths, dump directories
#   OPENSSL_*, SSL_*, *_CA_BUNDLE, SSLKEYLOGFILE
#               OpenSSL loads engines and providers (shared objects) from OPENSSL_CONF; the CA
#               variables decide whom the store and Kafka clients trust
#   KAFKA_*, MONGODB_*, SUSY_*, JOB_*
#               the operator's own (contracts.md §4): the Kafka Secret comes in through envFrom,
#               which any `env` entry of the same name would override
#   AWS_*, GOOGLE_*, AZURE_*
#               object-storage clients: AWS_CONFIG_FILE's credential_process runs a command, and
#               credentials belong in a Secret (spec.dataset.secretName), not in the spec; the
#               region and endpoint of an S3-compatible store are allowed by name below
#   PATH, HOME, TMPDIR, MPLCONFIGDIR, MPLBACKEND (`module://` imports a module), KRB5*
RESERVED_ENV_PREFIXES: Final = ("LD_", "GLIBC_", "MALLOC_", "PYTHON", "TF_", "XLA_", "OPENSSL_", "SSL_",
                                "KAFKA_", "MONGODB_", "SUSY_", "JOB_", "AWS_", "GOOGLE_", "AZURE_", "KRB5")
RESERVED_ENV_NAMES: Final = frozenset({"PATH", "HOME", "TMPDIR", "MPLCONFIGDIR", "MPLBACKEND", "GCONV_PATH",
                                       "LOCPATH", "NLSPATH", "HOSTALIASES", "RES_OPTIONS", "LOCALDOMAIN",
                                       "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSLKEYLOGFILE"})
# Not secret and not code: the region and endpoint of an S3-compatible store (docs/operator.md).
ALLOWED_RESERVED_ENV: Final = frozenset({"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
                                         "AWS_ENDPOINT_URL_S3"})

# Local paths a dataset may not name: the kernel's views of the pod (/proc/self/environ holds
# every credential the pod has), devices, the operator's own Secret mounts (builders.py
# KAFKA_SECRET_PATH, STORE_CA_PATH) and service-account tokens, wherever a runtime puts them.
REFUSED_DATA_PATHS: Final = ("/proc", "/sys", "/dev", "/etc/susy", "/var/run/secrets", "/run/secrets")
# Where the pipeline image resolves a relative path (images/Dockerfile, WORKDIR of target pipeline).
PIPELINE_WORKDIR: Final = "/opt/susy"
LOCAL_SCHEME: Final = re.compile(r"^file://", re.IGNORECASE)

# The default topic of a TrainingRun: its own, so two runs never share one by accident.
TOPIC_PREFIX: Final = "susy"
MAX_TOPIC: Final = 249  # Kafka's limit (clients/.../internals/Topic.java, MAX_NAME_LENGTH)


class NotAllowed(SpecError):
    """A spec the operator's tenancy settings refuse (reason NotAllowed; the run fails, no Job)."""
    reason = crd.REASON_NOT_ALLOWED


@dataclasses.dataclass(frozen=True)
class Policy:
    """The operator's tenancy settings (config.py reads them; the chart's `tenancy.*` values)."""
    # default_image: the pipeline image (SUSY_PIPELINE_IMAGE), always allowed.
    default_image: str
    # allowed_images: glob patterns (fnmatch: `*` matches any characters, `/` and `:` too).
    allowed_images: tuple[str, ...] = ()
    # allowed_env: glob patterns of variable names; empty means any name that is not reserved.
    allowed_env: tuple[str, ...] = ()
    # allowed_secrets / allowed_claims: glob patterns of names a run may use in any namespace,
    # besides those labelled LABEL_ALLOW_RUNS=true.
    allowed_secrets: tuple[str, ...] = ()
    allowed_claims: tuple[str, ...] = ()
    # operator_secrets: the connection Secrets the operator gives to Jobs itself (store, Kafka,
    # store CA): never a run's dataset Secret, labelled or not.
    operator_secrets: frozenset[str] = frozenset()


def _setting(setting: tuple[str, str]) -> str:
    return f"the operator setting {setting[0]} (env {setting[1]})"


def _matches(value: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


def image_problems(images: Sequence[tuple[str, str | None]], policy: Policy) -> list[str]:
    """(field, image) pairs; an unset image is the pipeline image."""
    return [f"{field} {image!r} is not an allowed image: runs use {policy.default_image!r} or an image "
            f"matching {_setting(SETTING_IMAGES)}"
            for field, image in images
            if image is not None and image != policy.default_image and not _matches(image, policy.allowed_images)]


def env_problems(root: str, env: Sequence[tuple[str, str]], policy: Policy) -> list[str]:
    problems = []
    for i, (name, _) in enumerate(env):
        field = f"{root}.env[{i}].name {name}"
        if name not in ALLOWED_RESERVED_ENV and (name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES)):
            problems.append(f"{field} is reserved (the loader's, Python's, TensorFlow's, TLS's, the object-storage "
                            "clients' or the operator's own variables); no operator setting allows it")
        elif policy.allowed_env and not _matches(name, policy.allowed_env):
            problems.append(f"{field} is not allowed by {_setting(SETTING_ENV)}")
    return problems


def _may_reach(path: str, prefix: str) -> bool:
    """Whether a local path or glob (no `..`) names `prefix` or something under it."""
    parts = [p for p in path.split("/") if p and p != "."]
    for i, want in enumerate(p for p in prefix.split("/") if p):
        if i >= len(parts):
            return False
        if "**" in parts[i]:
            return True
        if not fnmatch.fnmatchcase(want, parts[i]):
            return False
    return True


def data_path_problems(uris: Sequence[tuple[str, str]]) -> list[str]:
    """(field, uri) pairs. Remote URIs pass; a local path or glob must stay out of REFUSED_DATA_PATHS."""
    problems = []
    for field, uri in uris:
        if "://" in uri and not LOCAL_SCHEME.match(uri):
            continue
        path = LOCAL_SCHEME.sub("", uri)
        if ".." in path.split("/"):
            problems.append(f"{field} {uri!r} must not contain '..'")
            continue
        absolute = path if path.startswith("/") else posixpath.join(PIPELINE_WORKDIR, path)
        reached = [p for p in REFUSED_DATA_PATHS if _may_reach(absolute, p)]
        if reached:
            problems.append(f"{field} {uri!r} reaches {reached[0]}, which no run may read "
                            f"(refused: {', '.join(REFUSED_DATA_PATHS)}); no operator setting allows it")
    return problems


def claims(volumes: Volumes, root: str = "spec") -> list[tuple[str, str]]:
    """(field, claim name) of each persistentVolumeClaim volume."""
    return [(f"{root}.volumes[{i}].persistentVolumeClaim.claimName", str(v["persistentVolumeClaim"].get("claimName")))
            for i, v in enumerate(volumes.volumes) if "persistentVolumeClaim" in v]


def _spec_parts(spec: TrainingRunSpec | EvaluationRunSpec) -> tuple[
        list[tuple[str, str | None]], list[tuple[str, str]], str | None]:
    """(images, dataset URIs, dataset Secret) of either kind, each with its field."""
    if isinstance(spec, TrainingRunSpec):
        return ([("spec.images.producer", spec.producer_image), ("spec.images.trainer", spec.trainer_image)],
                [("spec.dataset.uri", spec.dataset.uri)], spec.dataset.secret_name)
    return ([("spec.image", spec.image)], [(f"spec.dataset.uris[{i}]", u) for i, u in enumerate(spec.uris)],
            spec.secret_name)


LabelsOf = Callable[[str, str], "Mapping[str, str] | None"]


def _unlabelled(kind: str, field: str, name: str, patterns: Sequence[str], setting: tuple[str, str],
                labels_of: LabelsOf) -> str | None:
    if _matches(name, patterns):
        return None
    labels = labels_of(kind, name)
    if labels is None:
        return f"{field} {name}: no such {kind} in the run's namespace"
    if labels.get(LABEL_ALLOW_RUNS) == "true":
        return None
    return (f"{field} {name}: the {kind} is not open to runs: label it {LABEL_ALLOW_RUNS}=true, "
            f"or name it in {_setting(setting)}")


def enforce(spec: TrainingRunSpec | EvaluationRunSpec, policy: Policy, labels_of: LabelsOf) -> None:
    """Raise NotAllowed naming every field the settings refuse. `labels_of(kind, name)`: the labels
    of the Secret or PersistentVolumeClaim of that name in the run's namespace, None if absent
    (called only for names no pattern allows)."""
    images, uris, secret = _spec_parts(spec)
    problems = image_problems(images, policy)
    problems += env_problems("spec", spec.env, policy)
    problems += data_path_problems(uris)
    if secret is not None:
        if secret in policy.operator_secrets:
            problems.append(f"spec.dataset.secretName {secret} is one of the operator's own connection Secrets; "
                            "no operator setting allows it")
        else:
            problem = _unlabelled("Secret", "spec.dataset.secretName", secret, policy.allowed_secrets,
                                  SETTING_SECRETS, labels_of)
            problems += [problem] if problem else []
    for field, claim in claims(spec.volumes):
        problem = _unlabelled("PersistentVolumeClaim", field, claim, policy.allowed_claims, SETTING_CLAIMS, labels_of)
        problems += [problem] if problem else []
    if problems:
        raise NotAllowed(problems)


def default_topic(namespace: str, name: str) -> str:
    """`susy-<namespace>-<name>`: a TrainingRun's own topic when spec.kafka.topic is unset.

    Namespaces and names are DNS labels and subdomains, so the result is a valid Kafka name; a
    name with dots or too long for Kafka's 249 characters is cut and given a hash of the whole,
    so that two runs never share a default topic (a dot is replaced: Kafka warns that `.` and `_`
    collide in metric names)."""
    topic = f"{TOPIC_PREFIX}-{namespace}-{name}"
    if "." not in topic and len(topic) <= MAX_TOPIC:
        return topic
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:12]
    return f"{topic.replace('.', '-')[: MAX_TOPIC - len(digest) - 1]}-{digest}"


def run_topic(run: Mapping[str, Any]) -> str:
    """The topic a TrainingRun (as the API serves it) produces into: spec.kafka.topic, or its own."""
    topic = ((run.get("spec") or {}).get("kafka") or {}).get("topic")
    return topic if isinstance(topic, str) and topic else default_topic(run["metadata"]["namespace"],
                                                                        run["metadata"]["name"])


def _holds_topic(run: Mapping[str, Any]) -> bool:
    """Whether a TrainingRun holds its topic for younger runs: a run that produces and is not yet
    decided (no phase), producing, or queued for the topic itself (Pending with Produced reason
    TopicBusy). A run Pending for another reason (its warm-start parent) is not queued: it would
    wait for a run that waits for it."""
    if (run.get("spec") or {}).get("source"):
        return False  # trains on offsets already in Kafka (spec.source): it has no producer
    status = run.get("status") or {}
    phase = status.get("phase")
    if phase in (None, "", crd.PRODUCING):
        return True
    return phase == crd.PENDING and any(c.get("type") == crd.PRODUCED and c.get("reason") == crd.REASON_TOPIC_BUSY
                                        for c in status.get("conditions") or [])


def topic_holder(me: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The TrainingRun that goes before `me` on its topic, or None when `me` may produce now.

    Two producers writing one topic at once interleave their rows, which the producer refuses (exit
    3). So the producers of one topic run one at a time, oldest first (creationTimestamp, then uid),
    among the runs that hold it (_holds_topic). Each run decides from the same listing, so two runs
    created at once agree."""
    def key(run: Mapping[str, Any]) -> tuple[str, str]:
        return (run["metadata"].get("creationTimestamp") or "", run["metadata"].get("uid") or "")

    mine, my_uid = run_topic(me), me["metadata"].get("uid")
    ahead = [run for run in runs
             if run["metadata"].get("uid") != my_uid and not run["metadata"].get("deletionTimestamp")
             and _holds_topic(run) and run_topic(run) == mine and key(run) < key(me)]
    return min(ahead, key=key, default=None)
