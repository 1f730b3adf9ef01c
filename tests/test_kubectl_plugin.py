"""`kubectl susy` (operator/susy_operator/kubectl_plugin.py) against the API emulator, with the real
operator and the Job runner: runs listed with their phase, model and metrics; a run's logs in step
order, every line prefixed; an EvaluationRun's leaderboard; the store's models through a Job that
runs the real `susy-pipeline models list`; and a user whose RBAC lacks pods/log told so."""
from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from susy_operator import crd, kubectl_plugin
from support import fakes
from support.fixtures import NAMESPACE, cluster, evaluation_run, operator, store_uri, training_run  # noqa: F401
from support.harness import Cluster

ROOT = Path(__file__).resolve().parents[1]


def kubeconfig(cluster: Cluster, tmp_path: Path, token: str = "admin") -> str:
    path = tmp_path / f"kubeconfig-{token}"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": cluster.url}}],
        "users": [{"name": token, "user": {"token": token}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": token, "namespace": NAMESPACE}}],
    }))
    return str(path)


def susy(config: str, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = kubectl_plugin.main(["--kubeconfig", config, *argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


async def logging_executor(job: dict[str, Any], index: int, env: dict[str, str]) -> int | None:
    """fakes.executor, each pod writing a line or two of log; the models Job runs for real."""
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    if "models list" in " ".join(command):
        return None  # `susy-pipeline models list` and `models alias list` themselves, against the store
    with open(env["SUSY_TEST_POD_LOG"], "a") as log:
        log.write(f"{command[3]} started\n{command[3]} done (index {index})\n")
    return await fakes.executor(job, index, env)


@pytest.fixture
def finished_runs(cluster: Cluster, operator) -> Cluster:
    cluster.start_runner(executor=logging_executor)
    operator()
    cluster.create(training_run("tr"))
    cluster.create(evaluation_run("er", {"trainingRun": "tr"}))
    cluster.wait_phase("evaluationruns", NAMESPACE, "er", {crd.SUCCEEDED}, 60)
    return cluster


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_get_logs_leaderboard_and_models(finished_runs: Cluster, tmp_path: Path, store_uri: str) -> None:
    from susy_pipeline.store import open_store

    cluster = finished_runs
    config = kubeconfig(cluster, tmp_path)
    tr = cluster.get("trainingruns", NAMESPACE, "tr")
    er = cluster.get("evaluationruns", NAMESPACE, "er")
    model_id = tr["status"]["modelId"]

    code, out, err = susy(config, "get")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "PHASE", "MODEL", "METRICS", "AGE"]
    assert lines[1].split()[:5] == ["EvaluationRun", "er", "Succeeded", model_id, f"accuracy={er['status']['accuracy']:.4f}"]
    assert lines[2].split()[:5] == ["TrainingRun", "tr", "Succeeded", model_id, "rows=2000"]

    code, out, err = susy(config, "logs", "tr")
    assert (code, err) == (0, "")
    assert out.splitlines() == ["[producer] produce started", "[producer] produce done (index 0)",
                                "[trainer] train started", "[trainer] train done (index 0)"]
    code, out, _ = susy(config, "logs", "er", "-f")
    assert code == 0
    assert sorted(out.splitlines()) == sorted(f"[evaluator shard {i}] {line}" for i in range(3)
                                              for line in ("evaluate started", f"evaluate done (index {i})"))

    code, out, err = susy(config, "leaderboard", "er")
    assert code == 0, err
    header, first = out.splitlines()[:2]
    assert header.split() == ["RANK", "REFERENCE", "MODEL", "AUC", "ACCURACY", "LOG-LOSS", "ROWS"]
    assert first.split()[:4] == ["1*", "trainingRun:tr", model_id, f"{er['status']['auc']:.4f}"]

    with open_store(store_uri, "bigdata", namespace=NAMESPACE) as store:
        store.set_alias("champion", model_id, set_by="test")
    code, out, err = susy(config, "models")
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == ["MODEL", "CREATED", "RUN", "ROWS", "VAL-AUC", "ALIASES"]
    assert row.split()[0] == model_id and row.split()[2] == tr["status"]["runName"] and row.split()[-1] == "champion"
    assert not [j for j in cluster.list("jobs", NAMESPACE) if j["metadata"]["name"].startswith("susy-models-")], \
        "the models Job is deleted once read"


class TimedLines(io.TextIOBase):
    """An output that records when each line was written (print writes a line's text, then "\n")."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, str]] = []
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *done, self._pending = self._pending.split("\n")
        self.lines.extend((time.monotonic(), line) for line in done)
        return len(text)


WRITTEN: dict[str, float] = {}  # a slow pod's line -> when it was written (CLOCK_MONOTONIC)


async def slow_executor(job: dict[str, Any], index: int, env: dict[str, str]) -> int | None:
    """fakes.executor, each pod writing a line, then another two seconds later."""
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    for line, pause in ((f"{command[3]} started", 2.0), (f"{command[3]} done", 0.0)):
        with open(env["SUSY_TEST_POD_LOG"], "a") as log:
            log.write(line + "\n")
        WRITTEN[line] = time.monotonic()
        await asyncio.sleep(pause)
    return await fakes.executor(job, index, env)


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_logs_follow_streams_a_running_runs_lines_as_its_pods_write_them(cluster: Cluster, operator,
                                                                          tmp_path: Path) -> None:
    """`logs -f` started before any pod runs: each line arrives while its pod still runs (the
    first about two seconds before the second), the producer's before the trainer's, and the
    command returns once the run has ended."""
    cluster.start_runner(executor=slow_executor)
    operator()
    cluster.create(training_run("tr-live"))
    out, err = TimedLines(), io.StringIO()
    code = kubectl_plugin.main(["--kubeconfig", kubeconfig(cluster, tmp_path), "logs", "tr-live", "-f"],
                               out=out, err=err)
    returned = time.monotonic()
    assert code == kubectl_plugin.EXIT_OK, err.getvalue()
    assert [line for _, line in out.lines] == ["[producer] produce started", "[producer] produce done",
                                               "[trainer] train started", "[trainer] train done"]
    # Each pod's first line reached the terminal before the pod had written its second (two
    # seconds later): followed while it ran, not read once it had ended.
    arrived = {line.split("] ", 1)[1]: t for t, line in out.lines}
    for step in ("produce", "train"):
        assert arrived[f"{step} started"] < WRITTEN[f"{step} done"] <= arrived[f"{step} done"], (arrived, WRITTEN)
    assert cluster.get("trainingruns", NAMESPACE, "tr-live")["status"]["phase"] == crd.SUCCEEDED
    assert returned >= max(arrived.values())


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_user_without_pods_log_is_told_what_to_ask_for(finished_runs: Cluster, tmp_path: Path) -> None:
    cluster = finished_runs
    assert cluster.emulator is not None
    cluster.emulator.denied["alice"] = ("alice", {("get", "", "pods/log"), ("list", crd.GROUP, "evaluationruns")})
    config = kubeconfig(cluster, tmp_path, "alice")

    code, out, err = susy(config, "logs", "tr")
    assert code == kubectl_plugin.EXIT_INCOMPLETE and out == ""
    assert "cannot get pods/log in namespace default: your RBAC does not allow it" in err
    assert "ask for verb `get` on resource `pods/log`" in err
    assert 'User "alice" cannot get resource "pods/log"' in err  # the API server's own words

    code, out, err = susy(config, "get")  # what it may read, it shows; what not, it names
    assert code == kubectl_plugin.EXIT_INCOMPLETE
    assert "TrainingRun" in out and "EvaluationRun" not in out
    assert "cannot list evaluationruns.susy.dev in namespace default" in err

    code, _, err = susy(config, "logs", "nothing")
    assert code == kubectl_plugin.EXIT_INCOMPLETE and "no TrainingRun or EvaluationRun named nothing" in err


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_installing_the_package_puts_a_working_kubectl_susy_on_path(cluster: Cluster, tmp_path: Path) -> None:
    """kubectl runs an executable named kubectl-NAME found on PATH as `kubectl NAME`: pip installs
    the console script `kubectl-susy` (a copy of the project is installed, so the checkout stays
    clean), and found on PATH it lists the runs through the user's kubeconfig."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kubectl-susy"] == "susy_operator.kubectl_plugin:main"
    source = tmp_path / "src"
    for part in ("pyproject.toml", "README.md", "operator", "images/pipeline"):
        target = source / part
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ROOT / part).is_dir() else shutil.copy)(ROOT / part, target)
    installed = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(installed), str(source)], check=True, cwd=tmp_path)
    plugin = shutil.which("kubectl-susy", path=str(installed / "bin"))
    assert plugin is not None
    cluster.call(cluster.emulator.put, "trainingruns", {**training_run("tr"), "status": {
        "phase": crd.SUCCEEDED, "modelId": "ab" * 16, "rowsProduced": 2000}})
    cluster.call(cluster.emulator.put, crd.CONTINUAL_PLURAL, {
        "apiVersion": crd.API_VERSION, "kind": crd.CONTINUAL_KIND, "metadata": {"name": "live", "namespace": NAMESPACE},
        "spec": {}, "status": {"generation": 2, "champion": {"modelId": "cd" * 16},
                               "current": {"generation": 2, "trainingRun": "live-g2-train",
                                           "evaluationRun": "live-g2-eval"}}})
    result = subprocess.run([plugin, "--kubeconfig", kubeconfig(cluster, tmp_path), "get"], capture_output=True,
                            text=True, env={"PATH": os.environ["PATH"], "PYTHONPATH": str(installed)}, timeout=60)
    assert result.returncode == 0, result.stderr
    code, _, err = susy(kubeconfig(cluster, tmp_path), "logs", "live")  # a ContinualTraining: which runs to ask for
    assert code == kubectl_plugin.EXIT_INCOMPLETE
    assert err.strip().endswith("live is a ContinualTraining; generation 2's runs: kubectl susy logs live-g2-train, "
                                "kubectl susy logs live-g2-eval"), err
    assert [line.split()[:5] for line in result.stdout.splitlines()[1:]] == [
        ["ContinualTraining", "live", "-", "cd" * 16, "generation=2"],
        ["TrainingRun", "tr", "Succeeded", "ab" * 16, "rows=2000"]]


def test_get_shows_a_continual_trainings_champion_generation_and_last_decision() -> None:
    import datetime

    now = datetime.datetime(2026, 12, 6, 12, tzinfo=datetime.timezone.utc)
    runs = [
        {"kind": crd.CONTINUAL_KIND, "metadata": {"name": "live", "creationTimestamp": "2026-12-06T10:00:00Z"},
         "status": {"generation": 3,
                    "champion": {"modelId": "cd" * 16, "value": 0.87654, "metric": "auc"},
                    "lastDecision": {"generation": 3, "decision": crd.REJECTED}}},
        {"kind": crd.CONTINUAL_KIND, "metadata": {"name": "new", "creationTimestamp": "2026-12-06T11:59:30Z"}},
        {"kind": crd.TRAINING_KIND, "metadata": {"name": "kafka", "creationTimestamp": "2026-12-06T11:00:00Z"},
         "status": {"phase": crd.SUCCEEDED, "modelId": "ef" * 16, "rowsTrained": 4000}},
    ]
    lines = kubectl_plugin.runs_table(runs, now, all_namespaces=False).splitlines()
    assert [line.split() for line in lines[1:]] == [
        ["ContinualTraining", "live", "-", "cd" * 16, "generation=3", "auc=0.8765", f"last={crd.REJECTED}", "2h"],
        ["ContinualTraining", "new", "-", "-", "-", "30s"],
        ["TrainingRun", "kafka", crd.SUCCEEDED, "ef" * 16, "rows=4000", "1h"]]


def test_models_job_takes_only_the_store_settings_of_the_operators_job() -> None:
    from susy_operator import builders, spec as spec_lib

    owner = builders.Owner(kind=crd.TRAINING_KIND, name="t", namespace="ns", uid="u" * 8)
    config = builders.JobConfig(image="registry/susy:1", kafka_bootstrap="k:9092", store_secret="store",
                                database="db", store_ca_secret="mongo-ca", service_account="runner")
    parsed = spec_lib.parse_training_run({"dataset": {"uri": "s3://b/d.csv", "secretName": "data-creds"},
                                          "env": [{"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"}]})
    template = builders.producer_job(owner, parsed, "ns.t.uuuuuuuu", config)
    job = kubectl_plugin.models_job(template, "ns", "abc123")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == kubectl_plugin.MODELS_COMMAND
    assert container["image"] == "registry/susy:1" and pod["serviceAccountName"] == "runner"
    # The store's URI (a secretKeyRef), database and namespace scope, and where the pod may write.
    assert {e["name"] for e in container["env"]} == {crd.ENV_STORE_URI, crd.ENV_DATABASE, "SUSY_NAMESPACE", "HOME",
                                                     "MPLCONFIGDIR", "PYTHONUNBUFFERED"}
    assert "envFrom" not in container, "neither the dataset's credentials nor Kafka's"
    assert {v["name"] for v in pod["volumes"]} == {"scratch", "store-ca"}
    assert job["metadata"]["labels"][crd.LABEL_MANAGED_BY] == "kubectl-susy"  # not the operator's to watch
