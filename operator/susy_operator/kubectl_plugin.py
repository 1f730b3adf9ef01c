"""`kubectl susy`: what a data scientist asks of the runs in a namespace, without label selectors.

  kubectl susy get [-A]                 the TrainingRuns, EvaluationRuns and ContinualTrainings:
                                        phase, model (a champion), metrics, age
  kubectl susy logs RUN [-f]            the run's pods' logs: the producer, then the trainer, then
                                        every shard, each line prefixed with its step (and shard)
  kubectl susy leaderboard EVALRUN      an EvaluationRun's models ranked by AUC
  kubectl susy models                   the store's models (and aliases), read by a short Job

Installed as the console script `kubectl-susy` (pyproject.toml, [project.scripts]): kubectl runs
any executable named `kubectl-NAME` on PATH as `kubectl NAME` (kubectl plugins,
https://kubernetes.io/docs/tasks/extend-kubectl/kubectl-plugins/). It uses your kubeconfig
($KUBECONFIG, --kubeconfig, --context) and so your RBAC: what it may not read it names, with the
verb and the resource to ask for, and goes on with the rest.

`models` runs a Job in the namespace, with the image and store settings of the newest Job the
operator made there, that prints `susy-pipeline models list` and `models alias list`; it reads that
Job's log, shows one table (each model with its aliases) and deletes the Job. A Job rather than a port-forward: the store's URI and password stay in the Secret that
only pods read (no `get secrets` for you, nothing on your disk), the store may be anything the
pods reach (a MongoDB replica set, Atlas, the embedded SQLite file on a volume), and it needs no
MongoDB client on your machine. It needs `create` and `delete` on `jobs`, `list` on `pods` and
`get` on `pods/log` in the namespace.
"""
from __future__ import annotations

import argparse
import datetime
import json
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TextIO

from susy_operator import builders, crd

EXIT_OK = 0
EXIT_INCOMPLETE = 1  # something could not be read (RBAC, a missing run): said on stderr
EXIT_USAGE = 2

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
# The models Job: not the operator's (its watchers select managed-by=susy-operator).
MODELS_COMPONENT = "models"
MANAGED_BY_PLUGIN = "kubectl-susy"
# Two JSON documents, one a line (susy_pipeline/cli.py): the models, then the aliases.
MODELS_COMMAND = ["sh", "-c", "python -m susy_pipeline models list && python -m susy_pipeline models alias list"]
# What the models Job copies of the operator's env: the store and where pods may write.
STORE_ENV = frozenset({crd.ENV_STORE_URI, crd.ENV_DATABASE, "SUSY_NAMESPACE", "HOME", "MPLCONFIGDIR",
                       "PYTHONUNBUFFERED"})
MODELS_TIMEOUT_SECONDS = 180
_KIND_NAMES = {crd.TRAINING_PLURAL: crd.TRAINING_KIND, crd.EVALUATION_PLURAL: crd.EVALUATION_KIND,
               crd.CONTINUAL_PLURAL: crd.CONTINUAL_KIND}


class Unreadable(Exception):
    """The API refused a read (or it names nothing): `message` says what and what to ask for."""


def _age(timestamp: str | None, now: datetime.datetime) -> str:
    if not timestamp:
        return "?"
    seconds = int((now - datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _number(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def run_metrics(run: Mapping[str, Any]) -> str:
    """What `get` shows of a run's results: rows for a TrainingRun, the scores for an EvaluationRun,
    the generation, the champion's score and the last decision for a ContinualTraining."""
    status = run.get("status") or {}
    if run.get("kind") == crd.CONTINUAL_KIND:
        champion = status.get("champion") or {}
        parts = [f"generation={status['generation']}"] if status.get("generation") is not None else []
        if champion.get("value") is not None:
            parts.append(f"{champion.get('metric') or 'metric'}={_number(champion['value'])}")
        if (status.get("lastDecision") or {}).get("decision"):
            parts.append(f"last={status['lastDecision']['decision']}")
        return " ".join(parts) or "-"
    if run.get("kind") == crd.TRAINING_KIND:
        rows = status.get("rowsTrained", status.get("rowsProduced"))
        return "-" if rows is None else f"rows={rows}"
    parts = [f"{label}={_number(status.get(key))}" for key, label in
             (("accuracy", "accuracy"), ("auc", "auc"), ("logLoss", "logloss")) if status.get(key) is not None]
    shards = status.get("shards") or {}
    if not parts and shards.get("progress"):
        parts = [f"shards={shards['progress']}"]
    return " ".join(parts) or "-"


def run_model(run: Mapping[str, Any]) -> str:
    status = run.get("status") or {}
    if run.get("kind") == crd.CONTINUAL_KIND:
        return (status.get("champion") or {}).get("modelId") or "-"
    models = status.get("models") or []
    if len(models) > 1:
        return f"{len(models)} models (best {(status.get('best') or {}).get('reference', '-')})"
    return status.get("modelId") or "-"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Columns as kubectl prints them: left-aligned, three spaces apart."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in rows)


def runs_table(runs: Sequence[Mapping[str, Any]], now: datetime.datetime, all_namespaces: bool) -> str:
    header = [*(["NAMESPACE"] if all_namespaces else []), "KIND", "NAME", "PHASE", "MODEL", "METRICS", "AGE"]
    rows = [header]
    for run in sorted(runs, key=lambda r: (r["metadata"].get("namespace", ""), r["kind"], r["metadata"]["name"])):
        meta = run["metadata"]
        rows.append([*([meta.get("namespace", "")] if all_namespaces else []), run["kind"], meta["name"],
                     (run.get("status") or {}).get("phase") or "-", run_model(run), run_metrics(run),
                     _age(meta.get("creationTimestamp"), now)])
    return table(rows)


def leaderboard_table(run: Mapping[str, Any]) -> str:
    """An EvaluationRun's status.leaderboard, best AUC first (`*` marks status.best)."""
    status = run.get("status") or {}
    board = list(status.get("leaderboard") or [])
    if not board:
        raise Unreadable(f"EvaluationRun {run['metadata']['name']} has no leaderboard yet "
                         f"(phase {status.get('phase') or 'not started'})")
    board.sort(key=lambda e: (e.get("auc") is None, -(e.get("auc") or 0.0)))
    best = (status.get("best") or {}).get("reference")
    rows = [["RANK", "REFERENCE", "MODEL", "AUC", "ACCURACY", "LOG-LOSS", "ROWS"]]
    for rank, entry in enumerate(board, 1):
        model = entry.get("modelId") or "+".join(entry.get("members") or []) or "-"
        rows.append([f"{rank}{'*' if entry.get('reference') == best else ''}", entry.get("reference", "-"), model,
                     _number(entry.get("auc")), _number(entry.get("accuracy")), _number(entry.get("logLoss")),
                     str(entry.get("rows", "-"))])
    return table(rows)


# --- a run's steps and their pods -------------------------------------------------------------------

def run_steps(run: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(step, Job name) of a run, in the order they run."""
    name = run["metadata"]["name"]
    jobs = (run.get("status") or {}).get("jobs") or {}
    if run["kind"] == crd.TRAINING_KIND:
        components = [(crd.PRODUCER, None), (crd.TRAINER, None)]
    else:
        components = [(crd.EVALUATOR, int((run.get("spec") or {}).get("shards") or 1))]
    return [(component, (jobs.get(component) or {}).get("name") or builders.job_name(name, component, completions))
            for component, completions in components]


def pods_in_order(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """A step's pods: by shard index, then oldest first (a retried shard's attempts in order)."""
    def key(pod: Mapping[str, Any]) -> tuple[int, str, str]:
        meta = pod.get("metadata") or {}
        index = (meta.get("labels") or {}).get(INDEX_LABEL)
        return (int(index) if index is not None else -1, meta.get("creationTimestamp") or "", meta.get("name", ""))
    return sorted(pods, key=key)


def log_prefix(step: str, pod: Mapping[str, Any], attempts: int) -> str:
    """`[producer]`, `[trainer]`, `[evaluator shard 3]`; with several attempts, the pod too."""
    meta = pod.get("metadata") or {}
    index = (meta.get("labels") or {}).get(INDEX_LABEL)
    where = step + (f" shard {index}" if index is not None else "")
    return f"[{where}{' ' + meta.get('name', '') if attempts > 1 else ''}]"


# --- the API, as the user sees it ---------------------------------------------------------------------

class Cluster:
    """The user's API access (kubeconfig), each refusal turned into an Unreadable that names the
    verb and the resource to ask for."""

    def __init__(self, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
        import kubernetes.client
        import kubernetes.config

        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=kubeconfig, context=context,
                                           client_configuration=configuration)
        if namespace is None:
            _, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
            if context is not None:
                contexts, _ = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
                active = next((c for c in contexts if c["name"] == context), active)
            namespace = (active or {}).get("context", {}).get("namespace") or "default"
        self.namespace = namespace
        self.client = kubernetes.client.ApiClient(configuration)
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.batch = kubernetes.client.BatchV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)

    def call(self, verb: str, resource: str, namespace: str | None, fn: Callable[[], Any]) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return fn()
        except ApiException as error:
            where = f"in namespace {namespace}" if namespace else "in any namespace"
            if error.status == 403:
                raise Unreadable(f"cannot {verb} {resource} {where}: your RBAC does not allow it "
                                 f"(ask for verb `{verb}` on resource `{resource}`); the API server said: "
                                 f"{_message(error)}") from None
            if error.status == 401:
                raise Unreadable(f"cannot {verb} {resource}: not logged in (401): {_message(error)}") from None
            raise

    def _json(self, response: Any) -> Any:
        return json.loads(response.data)

    def list_runs(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        kind = _KIND_NAMES[plural]

        def fetch() -> Any:
            if namespace is None:
                return self.custom.list_cluster_custom_object(crd.GROUP, crd.VERSION, plural, _preload_content=False)
            return self.custom.list_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, plural,
                                                             _preload_content=False)
        items = self._json(self.call("list", f"{plural}.{crd.GROUP}", namespace, fetch)).get("items") or []
        return [{**item, "kind": kind} for item in items]

    def get_run(self, plural: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        kind = _KIND_NAMES[plural]
        try:
            response = self.call("get", f"{plural}.{crd.GROUP}", self.namespace, lambda: self.custom.
                                 get_namespaced_custom_object(crd.GROUP, crd.VERSION, self.namespace, plural,
                                                              name, _preload_content=False))
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return {**self._json(response), "kind": kind}

    def job_pods(self, job_name: str) -> list[dict[str, Any]]:
        response = self.call("list", "pods", self.namespace, lambda: self.core.list_namespaced_pod(
            self.namespace, label_selector=f"{JOB_NAME_LABEL}={job_name}", _preload_content=False))
        return list(self._json(response).get("items") or [])

    def pod_log(self, pod: str, *, follow: bool = False) -> Iterator[str]:
        """The pod's log, line by line (with `follow`, until the pod ends)."""
        response = self.call("get", "pods/log", self.namespace, lambda: self.core.read_namespaced_pod_log(
            pod, self.namespace, follow=follow, _preload_content=False))
        pending = b""
        for chunk in response.stream(1024):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode(errors="replace")
        if pending:
            yield pending.decode(errors="replace")


def _message(error: Any) -> str:
    try:
        return json.loads(error.body).get("message") or str(error.reason)
    except (TypeError, ValueError):
        return str(error.reason)


# --- the commands ---------------------------------------------------------------------------------

def cmd_get(cluster: Cluster, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    namespace = None if args.all_namespaces else cluster.namespace
    runs: list[dict[str, Any]] = []
    code = EXIT_OK
    for plural in (crd.TRAINING_PLURAL, crd.EVALUATION_PLURAL, crd.CONTINUAL_PLURAL):
        try:
            runs += cluster.list_runs(plural, namespace)
        except Unreadable as problem:
            print(f"kubectl susy get: {problem}", file=err)
            code = EXIT_INCOMPLETE
    if runs:
        print(runs_table(runs, datetime.datetime.now(datetime.timezone.utc), args.all_namespaces), file=out)
    elif code == EXIT_OK:
        print(f"No TrainingRuns, EvaluationRuns or ContinualTrainings in {'any namespace' if namespace is None else 'namespace ' + namespace}.",
              file=err)
    return code


def find_run(cluster: Cluster, name: str, kinds: Sequence[str]) -> dict[str, Any]:
    found, refusals = [], []
    for plural in kinds:
        try:
            run = cluster.get_run(plural, name)
        except Unreadable as problem:
            refusals.append(str(problem))
            continue
        if run is not None:
            found.append(run)
    if len(found) > 1:
        raise Unreadable(f"both a TrainingRun and an EvaluationRun are named {name}: say which with --kind")
    if found:
        return found[0]
    raise Unreadable("; ".join(refusals) or f"no {' or '.join(_KIND_NAMES[p] for p in kinds)} named {name} "
                                            f"in namespace {cluster.namespace}{_continual_hint(cluster, name)}")


def _continual_hint(cluster: Cluster, name: str) -> str:
    """Where `name` is a ContinualTraining, which of its runs to ask for instead (its pods are
    its generations' TrainingRuns' and EvaluationRuns'); nothing where it is not, or unreadable."""
    try:
        continual = cluster.get_run(crd.CONTINUAL_PLURAL, name)
    except Unreadable:
        return ""
    if continual is None:
        return ""
    status = continual.get("status") or {}
    # The generation in flight, else the newest finished one (its children may have expired).
    latest = status.get("current") or (status.get("history") or [{}])[-1]
    if not latest.get("generation"):
        return f": {name} is a ContinualTraining that has not started a generation yet"
    runs = [r for r in (latest.get("trainingRun"), latest.get("evaluationRun")) if r]
    return (f": {name} is a ContinualTraining; generation {latest['generation']}'s runs: "
            + ", ".join(f"kubectl susy logs {r}" for r in runs))


def cmd_logs(cluster: Cluster, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    kinds = {"trainingrun": [crd.TRAINING_PLURAL], "evaluationrun": [crd.EVALUATION_PLURAL]}.get(
        args.kind, [crd.TRAINING_PLURAL, crd.EVALUATION_PLURAL])
    run = find_run(cluster, args.run, kinds)
    if args.follow:
        return _follow(cluster, run, kinds, out, err)
    code = EXIT_OK
    for step, job_name in run_steps(run):
        pods = pods_in_order(cluster.job_pods(job_name))
        if not pods:
            print(f"[{step}] no pods (yet) for Job {job_name}", file=err)
            continue
        for pod in pods:
            prefix = log_prefix(step, pod, _attempts(pods, pod))
            if ((pod.get("status") or {}).get("phase") or "Pending") == "Pending":
                print(f"{prefix} pod {pod['metadata']['name']} has not started", file=err)
                continue
            for line in cluster.pod_log(pod["metadata"]["name"]):
                print(f"{prefix} {line}", file=out)
    return code


def _attempts(pods: Sequence[Mapping[str, Any]], pod: Mapping[str, Any]) -> int:
    index = (pod["metadata"].get("labels") or {}).get(INDEX_LABEL)
    return sum(1 for p in pods if (p["metadata"].get("labels") or {}).get(INDEX_LABEL) == index)


def _follow(cluster: Cluster, run: Mapping[str, Any], kinds: Sequence[str], out: TextIO, err: TextIO) -> int:
    """Follow every pod of the run as it appears (shards at once), until the run has ended and
    every pod's log is read. Lines carry their prefix, so shards may interleave."""
    lock = threading.Lock()
    followed: dict[str, threading.Thread] = {}
    problems: list[str] = []

    def stream(prefix: str, pod: str) -> None:
        try:
            for line in cluster.pod_log(pod, follow=True):
                with lock:
                    print(f"{prefix} {line}", file=out, flush=True)
        except Unreadable as problem:
            problems.append(str(problem))

    while not problems:
        for step, job_name in run_steps(run):
            pods = pods_in_order(cluster.job_pods(job_name))
            for pod in pods:
                name = pod["metadata"]["name"]
                if name in followed or ((pod.get("status") or {}).get("phase") or "Pending") == "Pending":
                    continue
                followed[name] = threading.Thread(target=stream, args=(log_prefix(step, pod, _attempts(pods, pod)), name),
                                                  daemon=True)
                followed[name].start()
        if (run.get("status") or {}).get("phase") in crd.TERMINAL_PHASES and not any(
                t.is_alive() for t in followed.values()):
            break
        time.sleep(1.0)
        run = find_run(cluster, run["metadata"]["name"], kinds)
    for thread in followed.values():
        thread.join()
    if problems:
        raise Unreadable(problems[0])
    return EXIT_OK


def cmd_leaderboard(cluster: Cluster, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    print(leaderboard_table(find_run(cluster, args.evaluation_run, [crd.EVALUATION_PLURAL])), file=out)
    return EXIT_OK


def models_table(log: Sequence[str]) -> str:
    """The models Job's two documents as one table, newest first: each model with its aliases."""
    documents = []
    for line in log:
        if line.startswith("{"):
            try:
                documents.append(json.loads(line))
            except ValueError:
                continue
    models = next((d["models"] for d in documents if "models" in d), None)
    if models is None:
        raise Unreadable("the models Job printed no list of models; its log:\n" + "\n".join(log))
    aliases: dict[str, list[str]] = {}
    for alias in next((d["aliases"] for d in documents if "aliases" in d), []):
        aliases.setdefault(str(alias.get("model_id")), []).append(str(alias.get("name")))
    rows = [["MODEL", "CREATED", "RUN", "ROWS", "VAL-AUC", "ALIASES"]]
    for model in models:
        model_id = str(model.get("model_id"))
        rows.append([model_id, str(model.get("created_at", "-")), str(model.get("run", "-")),
                     str(model.get("rows", "-") if model.get("rows") is not None else "-"),
                     _number((model.get("metrics") or {}).get("val_auc")),
                     ",".join(sorted(aliases.get(model_id, []))) or "-"])
    return table(rows) if models else "No models in the store for this namespace."


def models_job(template: Mapping[str, Any], namespace: str, suffix: str) -> dict[str, Any]:
    """A Job that prints the store's models, with the image, store env, store CA volume, service
    account and security context of `template` (a Job the operator made in this namespace)."""
    pod = template["spec"]["template"]["spec"]
    container = pod["containers"][0]
    keep_volumes = {"scratch", "store-ca"}
    volumes = [v for v in pod.get("volumes") or [] if v.get("name") in keep_volumes]
    mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") in keep_volumes]
    labels = {crd.LABEL_NAME: crd.APP_NAME, crd.LABEL_COMPONENT: MODELS_COMPONENT, crd.LABEL_PART_OF: crd.PART_OF,
              crd.LABEL_MANAGED_BY: MANAGED_BY_PLUGIN}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "containers": [{
            "name": MODELS_COMPONENT,
            "image": container["image"],
            "imagePullPolicy": container.get("imagePullPolicy", "IfNotPresent"),
            "command": list(MODELS_COMMAND),
            "env": [e for e in container.get("env") or [] if e.get("name") in STORE_ENV],
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
            **({"securityContext": container["securityContext"]} if container.get("securityContext") else {}),
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    }
    for key in ("securityContext", "serviceAccountName"):
        if pod.get(key):
            pod_spec[key] = pod[key]
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": f"susy-models-{suffix}", "namespace": namespace, "labels": labels},
            "spec": {"backoffLimit": 0, "activeDeadlineSeconds": MODELS_TIMEOUT_SECONDS,
                     "ttlSecondsAfterFinished": 300, "template": {"metadata": {"labels": dict(labels)},
                                                                  "spec": pod_spec}}}


def cmd_models(cluster: Cluster, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    ns = cluster.namespace
    listed = cluster.call("list", "jobs.batch", ns, lambda: cluster.batch.list_namespaced_job(
        ns, label_selector=f"{crd.LABEL_MANAGED_BY}={crd.MANAGED_BY}", _preload_content=False))
    jobs = sorted(json.loads(listed.data).get("items") or [],
                  key=lambda j: j["metadata"].get("creationTimestamp") or "")
    if not jobs:
        raise Unreadable(f"no Job of the operator in namespace {ns} to take the image and store settings from: "
                         "start a TrainingRun or EvaluationRun here first")
    job = models_job(jobs[-1], ns, secrets.token_hex(3))
    name = job["metadata"]["name"]
    cluster.call("create", "jobs.batch", ns, lambda: cluster.batch.create_namespaced_job(
        ns, job, _preload_content=False))
    try:
        deadline = time.monotonic() + MODELS_TIMEOUT_SECONDS
        while True:
            current = json.loads(cluster.call("get", "jobs.batch", ns, lambda: cluster.batch.read_namespaced_job(
                name, ns, _preload_content=False)).data)
            state = {c["type"] for c in (current.get("status") or {}).get("conditions") or []
                     if c.get("status") == "True"}
            if state & {"Complete", "Failed"}:
                break
            if time.monotonic() > deadline:
                raise Unreadable(f"Job {name} did not finish in {MODELS_TIMEOUT_SECONDS} s "
                                 f"(kubectl -n {ns} describe job {name})")
            time.sleep(0.5)
        log = [line for pod in pods_in_order(cluster.job_pods(name))
               for line in cluster.pod_log(pod["metadata"]["name"])]
        if "Failed" in state:
            print("\n".join(log), file=err)
            print(f"kubectl susy models: Job {name} failed (its log is above)", file=err)
            return EXIT_INCOMPLETE
        print(models_table(log), file=out)
        return EXIT_OK
    finally:
        try:
            cluster.call("delete", "jobs.batch", ns, lambda: cluster.batch.delete_namespaced_job(
                name, ns, propagation_policy="Background", _preload_content=False))
        except Unreadable as problem:
            print(f"kubectl susy models: {problem}; its ttlSecondsAfterFinished removes it in 5 minutes", file=err)


COMMANDS = {"get": cmd_get, "logs": cmd_logs, "leaderboard": cmd_leaderboard, "models": cmd_models}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubectl susy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--namespace", help="the namespace (default: your kubeconfig context's)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    sub = p.add_subparsers(dest="command", required=True)
    get = sub.add_parser("get", help="the runs: phase, model, metrics, age")
    get.add_argument("-A", "--all-namespaces", action="store_true", help="the runs of every namespace")
    logs = sub.add_parser("logs", help="a run's logs: producer, trainer, every shard, each line prefixed")
    logs.add_argument("run", metavar="RUN", help="a TrainingRun or EvaluationRun")
    logs.add_argument("-f", "--follow", action="store_true", help="follow the logs until the run ends")
    logs.add_argument("--kind", choices=("trainingrun", "evaluationrun"),
                      help="which kind RUN is, where a TrainingRun and an EvaluationRun share its name")
    board = sub.add_parser("leaderboard", help="an EvaluationRun's models ranked by AUC")
    board.add_argument("evaluation_run", metavar="EVALRUN")
    sub.add_parser("models", help="the store's models, listed by a short Job in the namespace")
    return p


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = parser().parse_args(argv)
    try:
        cluster = Cluster(args.kubeconfig, args.context, args.namespace)
    except Exception as error:  # noqa: BLE001 - kubeconfig problems come in many types; all say the same
        print(f"kubectl susy: cannot use your kubeconfig: {error}", file=err)
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](cluster, args, out, err)
    except Unreadable as problem:
        print(f"kubectl susy {args.command}: {problem}", file=err)
        return EXIT_INCOMPLETE


if __name__ == "__main__":
    sys.exit(main())
