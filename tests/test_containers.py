"""The operator and every pod as real containers (`make docker-e2e`; marker `docker`).

Real here: the images built from images/Dockerfile, the Docker engine running them with each pod
spec's image, command, args, env, user, read-only root, dropped capabilities, no privilege
escalation, emptyDir volumes and CPU and memory limits (tests/support/pods.py); the operator's
own container from the chart's Deployment (tests/support/operator_container.py); the pipeline's
Kafka traffic (tansu, on loopback: host networking, with its records in an S3 bucket on moto so
that the broker can be stopped and started again: tests/support/durable.py) and the
tensorflow-io reader in the trainer.
Emulated: the API server (kmock plus tests/support/emulator.py), the Job controller and the
kubelet's bookkeeping (tests/support/jobrunner.py), MongoDB (the embedded SQLite store, on a
folder every container mounts at the same path: the stand-in for the network path to MongoDB).

Without an engine, or without the images (`make images`), every test here skips with the reason.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import TFIO_TANSU_SETTINGS
from susy_operator import crd, tenancy
from susy_pipeline import evaluation as evaluation_lib, store as store_lib
from support.fixtures import NAMESPACE, SECRET, condition, evaluation_run, training_run
from support.harness import REPO, Cluster
from support.jobrunner import JobRunner
from support.operator_container import OperatorContainer, free_port, render_deployment
from support.durable import DurableBroker, MotoServer, moto_missing
from support.pods import ContainerRuntime, engine_available, image_present

pytestmark = [pytest.mark.docker, pytest.mark.integration, pytest.mark.timeout(600)]

IMAGE_TAG = os.environ.get("IMAGE_TAG", "0.1.0")
PIPELINE_IMAGE = os.environ.get("PIPELINE_IMAGE", f"susy-pipeline:{IMAGE_TAG}")
OPERATOR_IMAGE = os.environ.get("OPERATOR_IMAGE", f"susy-operator:{IMAGE_TAG}")
IMAGE_SAMPLE = "/opt/susy/data/susy-sample.csv.gz"   # baked into the pipeline image
STORE_DIR = "/var/lib/susy-store"                     # where every container sees the store
HELM = str(REPO / ".venv" / "bin" / "helm") if (REPO / ".venv" / "bin" / "helm").exists() else "helm"
TRAIN_ROWS = 4000


@pytest.fixture(scope="module")
def engine() -> None:
    reason = os.environ.get("SUSY_DOCKER_UNAVAILABLE") or engine_available()
    if reason:
        pytest.skip(f"no Docker engine: {reason}")
    missing = [image for image in (PIPELINE_IMAGE, OPERATOR_IMAGE) if not image_present(image)]
    if missing:
        pytest.skip(f"images not built: {', '.join(missing)} (run `make images`)")


class Timeline:
    """What happened when, from the emulator's records and the runner's pods (printed by the e2e)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.rows: list[tuple[float, str]] = []

    def add(self, what: str) -> None:
        self.rows.append((time.monotonic() - self.t0, what))

    def render(self) -> str:
        return "\n".join(f"  {t:7.1f} s  {what}" for t, what in sorted(self.rows))


class DockerCluster:
    """The emulator, the container Job runner, the operator container, the store and the broker."""

    def __init__(self, workdir: Path, broker: DurableBroker) -> None:
        self.workdir = workdir
        self.broker = broker
        self.kafka = kafka = broker.bootstrap
        self.run_id = f"susy-test-{secrets.token_hex(3)}"
        self.store_host = workdir / "store"
        self.store_host.mkdir(mode=0o777)
        self.store_host.chmod(0o777)  # the containers run as uid 10001
        self.store_uri = f"sqlite:///{STORE_DIR}/store.sqlite3"
        self.mounts = [(str(self.store_host), STORE_DIR)]
        self.cluster = Cluster(workdir).start()
        self.cluster.create_store_secret(NAMESPACE, SECRET, self.store_uri)
        self.runtime = ContainerRuntime(workdir / "pods", run_id=self.run_id, extra_mounts=self.mounts)
        self.runner: JobRunner = self.cluster.start_runner(runtime=self.runtime)
        self.liveness_port = free_port()
        deployment = render_deployment(HELM, NAMESPACE, {
            "image.repository": OPERATOR_IMAGE.rsplit(":", 1)[0], "image.tag": OPERATOR_IMAGE.rsplit(":", 1)[1],
            "pipeline.image.repository": PIPELINE_IMAGE.rsplit(":", 1)[0],
            "pipeline.image.tag": PIPELINE_IMAGE.rsplit(":", 1)[1],
            "kafka.bootstrap": kafka, "store.secretName": SECRET,
            # tansu alone needs these for the tfio reader (README); the platform sets them, a CR may
            # not (spec.env reserves SUSY_*, tenancy.py).
            "kafka.tfioLibrdkafka": ",".join(TFIO_TANSU_SETTINGS).replace(",", "\\,"),
            "livenessPort": str(self.liveness_port), "extraEnv.SUSY_POLL_SECONDS": "0.5",
        })
        self.operator = OperatorContainer(self.cluster, workdir, deployment, extra_mounts=self.mounts,
                                          run_id=self.run_id)

    def store(self) -> store_lib.Store:
        return store_lib.open_store(f"sqlite:///{self.store_host}/store.sqlite3", namespace=NAMESPACE)

    def docker_ps(self, **labels: str) -> list[str]:
        filters = [f"--filter=label={k.replace('_', '.', 1)}={v}" for k, v in labels.items()]
        out = subprocess.run(["docker", "ps", "--quiet", f"--filter=label=susy.test/runner={self.run_id}", *filters],
                             capture_output=True, text=True)
        return out.stdout.split()

    def failed_logs(self) -> str:
        return "\n".join(f"--- {r.pod} ({r.reason}, exit {r.exit_code})\n{Path(r.log).read_text()[-1500:]}"
                         for r in self.runner.runs if r.log and r.exit_code and Path(r.log).exists())

    def close(self) -> None:
        try:
            self.operator.stop()
        finally:
            self.cluster.stop()
            self.runtime.remove_all()


@pytest.fixture(scope="module")
def durable_broker(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DurableBroker]:
    reason = moto_missing()
    if reason:
        pytest.skip(f"no S3 server for tansu's durable storage: {reason}")
    workdir = tmp_path_factory.mktemp("broker")
    moto = MotoServer(workdir)
    broker = DurableBroker(moto, workdir).start()
    try:
        yield broker
    finally:
        broker.stop()
        moto.stop()


@pytest.fixture(scope="module")
def docker_cluster(durable_broker: DurableBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerCluster]:
    dc = DockerCluster(tmp_path_factory.mktemp("docker"), durable_broker)
    try:
        yield dc
    finally:
        dc.close()


def _run_pipeline(dc: DockerCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """One command of the pipeline image, as the Jobs' pods run it (user, read-only root)."""
    return subprocess.run(
        ["docker", "run", "--rm", "--network", "host", "--user", "10001:10001", "--read-only",
         "--tmpfs", "/tmp:mode=1777", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
         "--env", "HOME=/tmp", "--mount", f"type=bind,source={dc.store_host},target={STORE_DIR}",
         PIPELINE_IMAGE, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("image, module", [(PIPELINE_IMAGE, "susy_pipeline"), (OPERATOR_IMAGE, "susy_operator")])
def test_images_run_unprivileged_with_their_entry_point(engine: None, image: str, module: str) -> None:
    """What the Dockerfile promises, run: uid 10001 by default, `python -m <package>` as the entry
    point, and (pipeline) the sample with its attribution baked in where relative paths resolve."""
    probe = ("import os, pathlib, sys; print(os.getuid(), os.getgid(), os.getcwd()); "
             "print(all(pathlib.Path(p).is_file() for p in sys.argv[1:]))")
    files = ["data/susy-sample.csv.gz", "data/README.md"] if module == "susy_pipeline" else []
    result = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", image,
                             "-c", probe, *files], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    uid, gid, cwd = result.stdout.split()[:3]
    assert (uid, gid) == ("10001", "10001")
    assert result.stdout.split()[3] == "True", "the sample and its README in the image"
    entry = subprocess.run(["docker", "image", "inspect", "--format", "{{json .Config.Entrypoint}}", image],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert entry == f'["python","-m","{module}"]'
    helped = subprocess.run(["docker", "run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp",
                             image, "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "usage" in helped.stdout.lower(), helped.stderr[-2000:]


def test_training_and_sharded_evaluation_in_containers(docker_cluster: DockerCluster, capsys) -> None:
    """`make docker-e2e`: TrainingRun (tfio reader) then a 3-shard EvaluationRun, every pod and the
    operator a container; the operator container is SIGKILLed between producer and trainer and
    started again. Status totals equal a single-process evaluation of the same rows exactly."""
    dc, cluster, timeline = docker_cluster, docker_cluster.cluster, Timeline()
    dc.operator.start().wait_healthy(dc.liveness_port)
    timeline.add("operator container healthy (kopf /healthz)")

    cluster.create(training_run(
        "tr", dataset={"uri": IMAGE_SAMPLE, "skip": 0, "limit": TRAIN_ROWS},
        kafka={"topic": f"docker-e2e-{dc.run_id}", "partitions": 2}, model={"recipe": "seed"}, epochs=1,
        reader="tfio"))
    timeline.add("TrainingRun tr created")
    cluster.wait_for(lambda: cluster.get("jobs", NAMESPACE, "tr-producer"), 60, "the producer Job")
    timeline.add("Job tr-producer created")
    dc.operator.kill()  # SIGKILL: the producer finishes while no operator runs
    timeline.add("operator container killed (SIGKILL)")
    cluster.wait_for(lambda: ((cluster.get("jobs", NAMESPACE, "tr-producer") or {}).get("status") or {}).get(
        "completionTime"), 180, "the producer to finish")
    timeline.add("Job tr-producer Complete")
    assert cluster.get("jobs", NAMESPACE, "tr-trainer") is None
    dc.operator.start().wait_healthy(dc.liveness_port)
    timeline.add("operator container started again")

    cluster.wait_for(lambda: cluster.get("jobs", NAMESPACE, "tr-trainer"), 60, "the trainer Job")
    timeline.add("Job tr-trainer created")
    tr = cluster.wait_phase("trainingruns", NAMESPACE, "tr", {crd.SUCCEEDED, crd.FAILED}, 300)
    timeline.add(f"TrainingRun tr {tr['status']['phase']}")
    assert tr["status"]["phase"] == crd.SUCCEEDED, (tr["status"], dc.failed_logs(), dc.operator.log()[-3000:])
    st = tr["status"]
    assert st["rowsProduced"] == TRAIN_ROWS
    trainer = next(r for r in dc.runner.runs if r.job == "tr-trainer")
    assert trainer.command[-2:] == ["--reader", "tfio"] or "tfio" in trainer.command
    assert "tensorflow-io" in Path(trainer.log).read_text() or "tfio" in Path(trainer.log).read_text()

    cluster.create(evaluation_run("er", {"trainingRun": "tr"}, dataset={"uris": [IMAGE_SAMPLE]},
                                  shards=3, parallelism=3, chunkRows=4096, stripeRows=4096))
    timeline.add("EvaluationRun er created")
    cluster.wait_for(lambda: cluster.get("jobs", NAMESPACE, "er-eval"), 60, "the evaluator Job")
    timeline.add("Job er-eval created (Indexed, 3 shards)")
    er = cluster.wait_phase("evaluationruns", NAMESPACE, "er", {crd.SUCCEEDED, crd.FAILED}, 400)
    timeline.add(f"EvaluationRun er {er['status']['phase']}")
    assert er["status"]["phase"] == crd.SUCCEEDED, (er["status"], dc.failed_logs())
    es = er["status"]
    assert es["shards"]["succeeded"] == 3 and es["shards"]["failed"] == 0

    single = _run_pipeline(dc, "evaluate", "--model", st["modelId"], "--data", IMAGE_SAMPLE,
                           "--evaluation", "single-process", "--shard-index", "0", "--shard-count", "1",
                           "--chunk-rows", "4096", "--store", dc.store_uri, "--namespace", NAMESPACE)
    assert single.returncode == 0, single.stderr[-3000:]
    expected = evaluation_lib.aggregate(dc.store().shard_results("single-process"), 1)
    assert es["rows"] == expected["rows"] == 20979
    assert (es["accuracy"], es["auc"], es["logLoss"], es["confusion"]) == (
        expected["accuracy"], expected["auc"], expected["log_loss"], expected["confusion"])
    assert cluster.job_creations() == {(NAMESPACE, "tr-producer"): 1, (NAMESPACE, "tr-trainer"): 1,
                                       (NAMESPACE, "er-eval"): 1}
    for run in dc.runner.runs:  # pods' starts and ends, from the runner
        timeline.add(f"  pod {run.pod} exit {run.exit_code} ({run.reason}, "
                     f"{(run.finished or 0) - (run.started or 0):.1f} s)")
    with capsys.disabled():
        print(f"\ncontainers end to end: accuracy {es['accuracy']:.6f}, AUC {es['auc']:.6f} over {es['rows']} "
              f"rows in 3 shards = single process\n{timeline.render()}")


def _evaluation(dc: DockerCluster, name: str, **spec: Any) -> dict[str, Any]:
    if not dc.operator.running():
        dc.operator.start().wait_healthy(dc.liveness_port)
    body = {"dataset": {"uris": [IMAGE_SAMPLE]}, "shards": 2, "parallelism": 2, "chunkRows": 1024,
            "stripeRows": 4096, **spec}
    return dc.cluster.create(evaluation_run(name, {"trainingRun": "tr"}, **body))


def test_shard_killed_mid_stream_is_retried_and_counted_once(docker_cluster: DockerCluster) -> None:
    dc, cluster = docker_cluster, docker_cluster.cluster
    if (cluster.get("trainingruns", NAMESPACE, "tr") or {}).get("status", {}).get("phase") != crd.SUCCEEDED:
        pytest.skip("needs the model of the end-to-end test")
    # chunkRows 1: one model call per row, so scoring a shard's ~10,000 rows takes seconds and the
    # kill lands mid-stream: after the shard logged its model loaded, before its result.
    _evaluation(dc, "er-kill", chunkRows=1)
    container = dc.runtime.container_name("er-kill-eval-1-0")

    def loaded() -> bool:
        logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True)
        return logs.returncode == 0 and " loaded in " in logs.stderr
    cluster.wait_for(loaded, 240, "shard 1 to load its model", interval=0.1)
    killed = subprocess.run(["docker", "kill", container], capture_output=True, text=True)
    assert killed.returncode == 0, killed.stderr
    er = cluster.wait_phase("evaluationruns", NAMESPACE, "er-kill", {crd.SUCCEEDED, crd.FAILED}, 400)
    assert er["status"]["phase"] == crd.SUCCEEDED, (er["status"], dc.failed_logs())
    attempts = sorted((r.index, r.attempt, r.exit_code) for r in dc.runner.runs if r.job == "er-kill-eval")
    assert attempts == [(0, 0, 0), (1, 0, 137), (1, 1, 0)]
    assert er["status"]["shards"]["failedPods"] == 1
    assert er["status"]["rows"] == 20979  # the retried shard counted once
    results = dc.store().shard_results(er["status"]["evaluation"])
    assert sorted(r["shard_index"] for r in results) == [0, 1]
    first = next(r for r in dc.runner.runs if r.job == "er-kill-eval" and r.index == 1 and r.attempt == 0)
    assert " rows in " not in Path(first.log).read_text(), "killed before it finished scoring"


def test_shard_over_its_memory_limit_is_oom_killed(docker_cluster: DockerCluster) -> None:
    dc, cluster = docker_cluster, docker_cluster.cluster
    if (cluster.get("trainingruns", NAMESPACE, "tr") or {}).get("status", {}).get("phase") != crd.SUCCEEDED:
        pytest.skip("needs the model of the end-to-end test")
    _evaluation(dc, "er-oom", shards=1, parallelism=1, backoffLimitPerIndex=0,
                resources={"limits": {"cpu": "1", "memory": "160Mi"}, "requests": {"memory": "160Mi"}})
    er = cluster.wait_phase("evaluationruns", NAMESPACE, "er-oom", {crd.SUCCEEDED, crd.FAILED}, 300)
    assert er["status"]["phase"] == crd.FAILED
    runs = [r for r in dc.runner.runs if r.job == "er-oom-eval"]
    assert [(r.exit_code, r.reason) for r in runs] == [(137, "OOMKilled")]
    assert "OOMKilled" in condition(er, crd.EVALUATED)["message"], er["status"]


def test_a_pod_cannot_write_outside_tmp(docker_cluster: DockerCluster) -> None:
    """The read-only root filesystem is applied: the pipeline image's own folder refuses a write,
    /tmp (the pod's emptyDir) takes it."""
    dc, cluster = docker_cluster, docker_cluster.cluster
    from susy_operator import builders
    from susy_operator.config import load

    config = load({"SUSY_PIPELINE_IMAGE": PIPELINE_IMAGE, "SUSY_KAFKA_BOOTSTRAP": dc.kafka,
                   "SUSY_STORE_SECRET": SECRET}).job_config
    job = builders.producer_job(builders.Owner("TrainingRun", "rofs", NAMESPACE, "uid-rofs"),
                                _spec_for_probe(), "rofs", config)
    script = ("import pathlib; pathlib.Path('/tmp/ok').write_text('x'); print('tmp writable'); "
              "pathlib.Path('/opt/susy/x').write_text('x')")
    job["metadata"]["ownerReferences"] = []
    job["spec"]["template"]["spec"]["containers"][0]["command"] = ["python", "-c", script]
    job["spec"]["podFailurePolicy"] = {"rules": []}
    job["spec"]["backoffLimit"] = 0
    cluster.create(job)
    cluster.wait_for(lambda: any(c.get("type") in ("Complete", "Failed") for c in
                                 ((cluster.get("jobs", NAMESPACE, job["metadata"]["name"]) or {}).get("status") or {})
                                 .get("conditions") or []), 120, "the probe Job to finish")
    run = next(r for r in dc.runner.runs if r.job == job["metadata"]["name"])
    log = Path(run.log).read_text()
    assert run.exit_code == 1, log
    assert "tmp writable" in log and "Read-only file system" in log, log


def test_a_failed_steps_cause_reaches_the_run_through_its_termination_message(docker_cluster: DockerCluster) -> None:
    """A TrainingRun whose dataset.skip is past the end of the file, as a new user might write it:
    the producer container (read-only root filesystem, an unprivileged user) writes its one-line
    error to /dev/termination-log, and the operator puts it in the Message column, the Failed
    condition and the Warning Event: the file's line, not the log's tail (FallbackToLogsOnError
    would give that only with the file empty)."""
    dc, cluster = docker_cluster, docker_cluster.cluster
    if not dc.operator.running():
        dc.operator.start().wait_healthy(dc.liveness_port)
    cluster.create(training_run("tr-past-end", dataset={"uri": IMAGE_SAMPLE, "skip": 30_000, "limit": 100},
                                kafka={"topic": f"past-end-{dc.run_id}", "partitions": 1}))
    tr = cluster.wait_phase("trainingruns", NAMESPACE, "tr-past-end", {crd.SUCCEEDED, crd.FAILED}, 120)
    assert tr["status"]["phase"] == crd.FAILED, tr["status"]
    cause = f"{IMAGE_SAMPLE}: no data rows after skipping 30000"
    (pod,) = [p for p in cluster.list("pods", NAMESPACE) if p["metadata"]["name"].startswith("tr-past-end-producer-")]
    (state,) = [c["state"]["terminated"] for c in pod["status"]["containerStatuses"]]
    # The file's one line: the log says it as "error: ..." among other lines, which the
    # fallback to the log's tail would have given instead.
    assert state["exitCode"] == 2 and state["message"].startswith(cause) and "\n" not in state["message"], state
    log = Path(next(r.log for r in dc.runner.runs if r.job == "tr-past-end-producer")).read_text()
    assert "error: " + cause in log
    assert f"Error (exit code 2): {cause}" in tr["status"]["message"], tr["status"]["message"]
    assert cause in condition(tr, crd.FAILED_CONDITION)["message"]
    assert any(cause in e["message"] for e in cluster.events(NAMESPACE, "tr-past-end") if e.get("type") == "Warning")
    assert not [r for r in dc.runner.runs if r.job == "tr-past-end-trainer"], "no trainer after a failed producer"


def _spec_for_probe():
    from susy_operator.spec import parse_training_run
    return parse_training_run({"dataset": {"uri": IMAGE_SAMPLE, "limit": 10}})


def test_broker_down_then_back_producer_retried_trainer_reads_recorded_offsets(docker_cluster: DockerCluster) -> None:
    """The broker stops as the producer's pod starts: the producer exits 3 (unavailable) after its
    bounded retries; the Job controller retries the pod after its back-off; the broker is back by
    then (with every record it had: durable storage) and the retry succeeds. The trainer reads
    exactly the offsets the successful attempt recorded: the model saw the run's rows, once."""
    dc, cluster = docker_cluster, docker_cluster.cluster
    if not dc.operator.running():
        dc.operator.start().wait_healthy(dc.liveness_port)
    rows = 3000
    dc.runner.retry_delay_seconds = 2.0
    try:
        cluster.create(training_run(
            "tr-outage", dataset={"uri": IMAGE_SAMPLE, "skip": 5000, "limit": rows},
            kafka={"topic": f"outage-{dc.run_id}", "partitions": 2}, model={"recipe": "seed"}, epochs=1,
            reader="kafka-python", runPolicy={"backoffLimit": 2}))
        cluster.wait_for(lambda: cluster.get("jobs", NAMESPACE, "tr-outage-producer"), 60, "the producer Job")
        dc.broker.stop()
        first = cluster.wait_for(lambda: next((r for r in dc.runner.runs if r.job == "tr-outage-producer"
                                               and r.exit_code is not None), None), 180, "the first producer pod")
        assert first.exit_code == 3, Path(first.log).read_text()[-2000:]
        assert "no Kafka broker answers" in Path(first.log).read_text()
        dc.broker.start()
        tr = cluster.wait_phase("trainingruns", NAMESPACE, "tr-outage", {crd.SUCCEEDED, crd.FAILED}, 300)
    finally:
        dc.runner.retry_delay_seconds = 0.0
    assert tr["status"]["phase"] == crd.SUCCEEDED, (tr["status"], dc.failed_logs())
    producers = [(r.attempt, r.exit_code) for r in dc.runner.runs if r.job == "tr-outage-producer"]
    assert producers == [(0, 3), (1, 0)]
    st = tr["status"]
    assert st["rowsProduced"] == rows
    assert sum(o["end"] - o["start"] for o in st["kafka"]["offsets"]) == rows
    model = dc.store().resolve_model(st["modelId"])
    assert model["rows"] == rows  # the trainer checks it too: StreamMismatch otherwise


def test_training_with_the_confluent_reader_in_containers(docker_cluster: DockerCluster) -> None:
    """A TrainingRun that names no reader trains through the operator's default, `confluent`
    (confluent-kafka in the pipeline image, librdkafka 2.16), against tansu with default settings
    (no SUSY_LIBRDKAFKA): the producer (confluent-kafka too) records the offsets, the trainer reads
    exactly those, and the model records the reader."""
    dc, cluster = docker_cluster, docker_cluster.cluster
    if not dc.operator.running():
        dc.operator.start().wait_healthy(dc.liveness_port)
    rows = 4000
    cluster.create(training_run(
        "tr-confluent", dataset={"uri": IMAGE_SAMPLE, "skip": 1000, "limit": rows},
        kafka={"topic": f"confluent-{dc.run_id}", "partitions": 3}, model={"recipe": "seed"}, epochs=1))
    tr = cluster.wait_phase("trainingruns", NAMESPACE, "tr-confluent", {crd.SUCCEEDED, crd.FAILED}, 300)
    assert tr["status"]["phase"] == crd.SUCCEEDED, (tr["status"], dc.failed_logs())
    trainer = next(r for r in dc.runner.runs if r.job == "tr-confluent-trainer")
    assert "--reader" in trainer.command and trainer.command[trainer.command.index("--reader") + 1] == "confluent"
    st = tr["status"]
    assert st["rowsProduced"] == st["rowsTrained"] == rows
    assert sum(o["end"] - o["start"] for o in st["kafka"]["offsets"]) == rows  # one row per message
    model = dc.store().resolve_model(st["modelId"])
    assert model["reader"] == "confluent" and model["rows"] == rows
    assert {int(p): r for p, r in model["lineage"]["partitions"].items()} == {
        o["partition"]: [o["start"], o["end"]] for o in st["kafka"]["offsets"]}


def test_a_pvc_backed_evaluation_reads_through_the_mounted_claim(docker_cluster: DockerCluster) -> None:
    """A PersistentVolumeClaim in an EvaluationRun: the shards' containers mount it (read-only, as the
    operator forces for shards) and score the files on it; the same rows from the image give the
    same totals. The claim is a host folder here (the runner's claims map), as a bound PV would be."""
    dc, cluster = docker_cluster, docker_cluster.cluster
    if (cluster.get("trainingruns", NAMESPACE, "tr") or {}).get("status", {}).get("phase") != crd.SUCCEEDED:
        pytest.skip("needs the model of the end-to-end test")
    claim = dc.workdir / "claim-susy-data"
    (claim / "susy").mkdir(parents=True)
    shutil.copy(REPO / "data" / "susy-sample.csv.gz", claim / "susy" / "part-0.csv.gz")
    claim.chmod(0o755)
    dc.runtime.claims["susy-data"] = claim
    # The namespace's owner opens the claim to runs (tenancy.py: an unlabelled claim is refused).
    cluster.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": "susy-data", "namespace": NAMESPACE,
                                 "labels": {tenancy.LABEL_ALLOW_RUNS: "true"}},
                    "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}})
    held_out = {"skip": 10979}
    _evaluation(dc, "er-pvc", dataset={"uris": ["/data/susy/*.csv.gz"], **held_out},
                volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "susy-data"}}],
                volumeMounts=[{"name": "data", "mountPath": "/data"}])
    _evaluation(dc, "er-image", dataset={"uris": [IMAGE_SAMPLE], **held_out})
    pvc = cluster.wait_phase("evaluationruns", NAMESPACE, "er-pvc", {crd.SUCCEEDED, crd.FAILED}, 300)
    image = cluster.wait_phase("evaluationruns", NAMESPACE, "er-image", {crd.SUCCEEDED, crd.FAILED}, 300)
    assert pvc["status"]["phase"] == image["status"]["phase"] == crd.SUCCEEDED, (pvc["status"], dc.failed_logs())
    job = cluster.get("jobs", NAMESPACE, "er-pvc-eval")
    (mount,) = [m for m in job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] if m["name"] == "data"]
    assert mount["readOnly"] is True
    assert pvc["status"]["rows"] == 10_000
    for key in ("rows", "accuracy", "auc", "logLoss", "confusion"):
        assert pvc["status"][key] == image["status"][key], key


def test_one_continual_generation_in_containers(docker_cluster: DockerCluster) -> None:
    """A ContinualTraining's first generation, every pod and the operator a container: rows written
    to a topic by a producer container (someone else's stream), the operator reads the topic's
    offsets itself, its child TrainingRun's trainer reads exactly those offsets (tfio with the
    tansu settings: the first generation starts at offset 0), and the alias points at the model."""
    dc, cluster = docker_cluster, docker_cluster.cluster
    if not dc.operator.running():
        dc.operator.start().wait_healthy(dc.liveness_port)
    topic = f"docker-ct-{dc.run_id}"
    produced = _run_pipeline(dc, "produce", "--data", IMAGE_SAMPLE, "--limit", "3000", "--rows-per-message", "10",
                             "--partitions", "2", "--topic", topic, "--bootstrap", dc.kafka, "--run-name",
                             "someone-elses-stream", "--store", dc.store_uri, "--namespace", NAMESPACE)
    assert produced.returncode == 0, produced.stderr[-3000:]
    cluster.create({"apiVersion": crd.API_VERSION, "kind": crd.CONTINUAL_KIND,
                    "metadata": {"name": "ct", "namespace": NAMESPACE},
                    "spec": {"kafka": {"topic": topic, "rowsPerMessage": 10}, "trigger": {"everyRows": 3000},
                             "model": {"recipe": "seed"}, "epochs": 1, "reader": "tfio",
                             "evaluation": {"dataset": {"uris": [IMAGE_SAMPLE], "skip": 10979, "limit": 4000}},
                             "alias": "docker-ct"}})

    def first_decision() -> dict[str, Any] | None:
        status = (cluster.get(crd.CONTINUAL_PLURAL, NAMESPACE, "ct") or {}).get("status") or {}
        return status if (status.get("lastDecision") or {}).get("generation") == 1 else None
    try:
        status = cluster.wait_for(first_decision, 400, "the first generation")
    except AssertionError as err:  # what the operator said is the first thing to read
        raise AssertionError(f"{err}\n{cluster.get(crd.CONTINUAL_PLURAL, NAMESPACE, 'ct')}\n"
                             f"operator log:\n{dc.operator.log()[-4000:]}\n{dc.failed_logs()}") from None
    assert status["lastDecision"]["decision"] == crd.PROMOTED, (status, dc.failed_logs())
    tr = cluster.get(crd.TRAINING_PLURAL, NAMESPACE, "ct-g1-train")
    assert tr["status"]["phase"] == crd.SUCCEEDED and tr["status"]["modelId"] == status["champion"]["modelId"]
    offsets = {str(o["partition"]): [o["start"], o["end"]] for o in tr["spec"]["source"]["kafka"]["offsets"]}
    production = dc.store().get_production("someone-elses-stream")
    # Every message the producer wrote, and nothing else: its 3,000 rows, counted by the trainer.
    assert offsets == production["partitions"]
    assert status["rowsConsumed"] == tr["status"]["rowsTrained"] == production["rows"] == 3000
    assert dc.store().in_namespace(NAMESPACE).get_alias("docker-ct")["model_id"] == status["champion"]["modelId"]
    assert cluster.job_creations()[(NAMESPACE, "ct-g1-train-trainer")] == 1
