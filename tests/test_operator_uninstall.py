"""Uninstalling the operator leaves no custom resource that cannot be deleted (issue 12, defect 8).

kopf puts its finalizer on every running TrainingRun and EvaluationRun (the reconcilers are
timers: kopf/on.py registers every timer with requires_finalizer=True), and only a running
operator takes it off. The chart's pre-delete hook runs `python -m susy_operator
release-finalizers`, which removes it and marks the CR released (operator/susy_operator/
finalizers.py). Checked here: the pure patch, the kopf registrations it relies on, the hook the
chart renders and the Role it runs under, and the real command against the API emulator while
the real operator runs, then with the operator gone, then after a reinstall.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from susy_operator import crd, finalizers
from support.fixtures import NAMESPACE, cluster, evaluation_run, operator, store_uri, training_run  # noqa: F401
from support.harness import REPO, Cluster

CHART = REPO / "charts" / "susy-operator"
HOOK = "templates/release-finalizers-job.yaml"


# --- the pure part -------------------------------------------------------------------------------------

def cr(finalizer_list: list[str] | None, rv: str = "7", **annotations: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "t", "namespace": "ns", "resourceVersion": rv, "annotations": annotations}
    if finalizer_list is not None:
        meta["finalizers"] = finalizer_list
    return {"metadata": meta, "status": {"phase": crd.TRAINING}}


def test_release_patch_removes_only_kopfs_finalizer_at_the_version_read() -> None:
    other = "example.com/keep-me"
    patch = finalizers.release_patch(cr([other, finalizers.KOPF_FINALIZER, "foregroundDeletion"]), "T")
    assert patch == {"metadata": {"resourceVersion": "7", "finalizers": [other, "foregroundDeletion"],
                                  "annotations": {finalizers.RELEASED_ANNOTATION: "T"}}}
    assert finalizers.release_patch(cr([finalizers.KOPF_FINALIZER]), "T")["metadata"]["finalizers"] == []
    assert finalizers.release_patch(cr([other]), "T") is None
    assert finalizers.release_patch(cr(None), "T") is None


def test_a_released_run_is_not_followed_until_reclaimed() -> None:
    running, done = {"phase": crd.EVALUATING}, {"phase": crd.SUCCEEDED}
    assert finalizers.is_followed(running, {})
    assert not finalizers.is_followed(done, {})
    released = {finalizers.RELEASED_ANNOTATION: "T"}
    assert not finalizers.is_followed(running, released)
    assert finalizers.reclaim_patch(released) == {"metadata": {"annotations": {finalizers.RELEASED_ANNOTATION: None}}}
    assert finalizers.reclaim_patch({}) is None
    for phase in (crd.PENDING, crd.PRODUCING, crd.TRAINING, crd.EVALUATING):
        assert finalizers.is_followed({"phase": phase}, {"other": "x"})


def test_kopf_adds_its_finalizer_only_for_the_timers_and_their_filter_drops_released_runs() -> None:
    """What the hook relies on, read from kopf's own registry: the finalizer's name, that only the
    timers require it, and that their `when=` filter is false for a released run (so the running
    operator does not add it back; kopf/_core/reactor/processing.py removes it instead)."""
    import kopf

    from susy_operator import handlers

    assert kopf.OperatorSettings().persistence.finalizer == finalizers.KOPF_FINALIZER
    registry = kopf.get_default_registry()
    ours = [h for h in [*registry._spawning.get_all_handlers(), *registry._changing.get_all_handlers()]
            if h.fn.__module__ == handlers.__name__]
    requiring = {h.id for h in ours if h.requires_finalizer}
    assert requiring == {"reconcile", "reconcile_continual", "expire"}  # running runs; a finished one's TTL
    assert {h.selector.any_name for h in ours if h.requires_finalizer} == {crd.TRAINING_PLURAL,
                                                                          crd.EVALUATION_PLURAL, crd.CONTINUAL_PLURAL}
    # (status, spec) for which each timer runs, and so kopf holds its finalizer. A ContinualTraining
    # has no phase while it follows its stream: followed until released.
    cases = {"reconcile": ({"phase": crd.TRAINING}, {}), "reconcile_continual": ({"phase": crd.TRAINING}, {}),
             "expire": ({"phase": crd.SUCCEEDED}, {"ttlSecondsAfterFinished": 60})}
    for handler in ours:
        if handler.requires_finalizer:
            status, spec = cases[str(handler.id)]
            assert handler.when(status=status, spec=spec, annotations={})
            assert not handler.when(status=status, spec=spec, annotations={finalizers.RELEASED_ANNOTATION: "T"})
    expiring = next(h for h in ours if str(h.id) == "expire")
    assert not expiring.when(status={"phase": crd.SUCCEEDED}, spec={}, annotations={}), "no TTL: no finalizer"
    assert not expiring.when(status={"phase": crd.TRAINING}, spec={"ttlSecondsAfterFinished": 0}, annotations={})


# --- the chart ---------------------------------------------------------------------------------------

def _helm() -> str:
    for candidate in (REPO / ".venv" / "bin" / "helm", Path(sys.prefix) / "bin" / "helm"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("helm")
    if not found:
        pytest.skip("helm is not installed: run `make tools` (make test does it first)")
    return found


def render(*sets: str) -> list[dict[str, Any]]:
    args = [_helm(), "template", "susy-operator", str(CHART), "--namespace", "susy"]
    for item in sets:
        args += ["--set", item]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}


@pytest.mark.parametrize("all_namespaces", [False, True], ids=["namespaced", "all-namespaces"])
def test_the_chart_releases_finalizers_in_a_pre_delete_hook(all_namespaces: bool) -> None:
    objs = render(*(["watchAllNamespaces=true"] if all_namespaces else []))
    hooks = [o for o in objs if o["kind"] == "Job"]
    (job,) = hooks
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-delete"
    assert set(annotations["helm.sh/hook-delete-policy"].split(",")) == {"before-hook-creation", "hook-succeeded"}
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    (deployment,) = [o for o in objs if o["kind"] == "Deployment"]
    operator_pod = deployment["spec"]["template"]["spec"]
    assert c["image"] == operator_pod["containers"][0]["image"]
    assert c["command"] == ["python", "-m", "susy_operator", "release-finalizers"]
    assert c["args"] == (["--all-namespaces"] if all_namespaces else ["--namespace=susy"])
    # It runs as the operator (the hook runs before helm deletes anything), and its pods are not
    # the Deployment's.
    assert pod["serviceAccountName"] == operator_pod["serviceAccountName"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert not selector.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    # The operator's Role (or ClusterRole) grants what the command calls (susy_operator.k8s:
    # list_custom_objects, merge_patch_custom_object), cluster-wide when it lists all namespaces.
    (role,) = [o for o in objs if o["kind"] == ("ClusterRole" if all_namespaces else "Role")]
    for plural in (crd.TRAINING_PLURAL, crd.EVALUATION_PLURAL):
        assert {(crd.GROUP, plural, "list"), (crd.GROUP, plural, "patch")} <= granted(role)
    (binding,) = [o for o in objs if o["kind"] == role["kind"] + "Binding"]
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]


# --- against the API emulator, with the real operator ----------------------------------------------------

def release(c: Cluster, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m susy_operator release-finalizers ...` as the hook runs it, logged in through a
    kubeconfig that points at the emulator (the command's own configuration path)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": c.url}}],
        "users": [{"name": "nobody", "user": {}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "nobody"}}]}))
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    return subprocess.run([sys.executable, "-m", "susy_operator", "release-finalizers", *args],
                          env={**env, "KUBECONFIG": str(kubeconfig)}, capture_output=True, text=True,
                          timeout=60, cwd=str(REPO))


def held(c: Cluster, plural: str, name: str) -> bool:
    obj = c.get(plural, NAMESPACE, name)
    return obj is not None and finalizers.KOPF_FINALIZER in (obj["metadata"].get("finalizers") or [])


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_uninstall_releases_running_runs_and_a_reinstall_follows_them_again(
        cluster: Cluster, operator, tmp_path: Path) -> None:
    async def never_finishes(job: dict, index: int, env: dict) -> int:
        import asyncio
        await asyncio.sleep(600)
        return 0

    cluster.start_runner(executor=never_finishes)
    first = operator(args=("--standalone", "--namespace", NAMESPACE))
    cluster.create(training_run("tr"))
    cluster.create(evaluation_run("er", {"trainingRun": "tr"}))  # waits in Pending for tr
    for plural, name in (("trainingruns", "tr"), ("evaluationruns", "er")):
        cluster.wait_for(lambda: held(cluster, plural, name), 20, f"kopf's finalizer on {name}")  # noqa: B023

    # helm uninstall, step 1: the pre-delete hook, while the operator still runs.
    done = release(cluster, tmp_path, f"--namespace={NAMESPACE}")
    assert done.returncode == 0, done.stderr
    assert "released 2 custom resources" in done.stdout
    for plural, name in (("trainingruns", "tr"), ("evaluationruns", "er")):
        obj = cluster.get(plural, NAMESPACE, name)
        assert not held(cluster, plural, name)
        assert finalizers.RELEASED_ANNOTATION in obj["metadata"]["annotations"]
    # The running operator does not put it back (its timers stopped for released runs).
    time.sleep(2)  # eight poll intervals of the operator under test (SUSY_POLL_SECONDS=0.25)
    assert not held(cluster, "trainingruns", "tr") and not held(cluster, "evaluationruns", "er")

    # A reinstall (a fresh operator) follows them again: the annotation goes, the finalizer returns.
    first.stop()
    second = operator(args=("--standalone", "--namespace", NAMESPACE))
    cluster.wait_for(lambda: held(cluster, "trainingruns", "tr"), 20, "the finalizer back on tr")
    tr = cluster.get("trainingruns", NAMESPACE, "tr")
    assert finalizers.RELEASED_ANNOTATION not in (tr["metadata"].get("annotations") or {})
    assert tr["status"]["phase"] == crd.PRODUCING

    # helm uninstall for good: hook, then the operator is deleted; the runs can be deleted after.
    assert release(cluster, tmp_path, "--all-namespaces").returncode == 0
    second.stop()
    cluster.delete("trainingruns", NAMESPACE, "tr")
    cluster.delete("evaluationruns", NAMESPACE, "er")
    assert cluster.get("trainingruns", NAMESPACE, "tr") is None
    assert cluster.get("evaluationruns", NAMESPACE, "er") is None
    cluster.wait_for(lambda: not cluster.list("jobs", NAMESPACE), 10, "the producer Job's garbage collection")


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_run_stuck_in_deletion_after_the_operator_died_is_released(cluster: Cluster, tmp_path: Path) -> None:
    """The case the issue describes: the operator is gone, a run deleted since waits for kopf's
    finalizer forever. The same command, run by hand, lets it go."""
    assert cluster.emulator is not None
    stuck = training_run("stuck")
    stuck["metadata"]["finalizers"] = [finalizers.KOPF_FINALIZER]
    stuck["status"] = {"phase": crd.PRODUCING}
    cluster.call(cluster.emulator.put, "trainingruns", stuck)
    cluster.delete("trainingruns", NAMESPACE, "stuck")
    assert cluster.get("trainingruns", NAMESPACE, "stuck")["metadata"]["deletionTimestamp"]
    done = release(cluster, tmp_path, "-n", NAMESPACE)
    assert done.returncode == 0, done.stderr
    assert cluster.get("trainingruns", NAMESPACE, "stuck") is None
    # Nothing left to release: the command succeeds and says so.
    again = release(cluster, tmp_path, "-n", NAMESPACE)
    assert again.returncode == 0 and "released 0 custom resources" in again.stdout, again.stderr
    refused = release(cluster, tmp_path)
    assert refused.returncode == 2 and "--namespace" in refused.stderr  # one of the two is required


def test_run_locks_serialize_one_run_and_forget_it_when_idle() -> None:
    """The timer and the wake-up handler of one run take turns; the registry holds a run only while
    a handler uses it, so it does not grow with every run the operator has followed."""
    import threading

    from susy_operator import runs

    locks = runs.RunLocks()
    inside, overlaps, started = [0], [], threading.Barrier(4)

    def handler(uid: str) -> None:
        started.wait()
        for _ in range(200):
            with locks.hold(uid):
                inside[0] += 1
                overlaps.append(inside[0])
                inside[0] -= 1

    threads = [threading.Thread(target=handler, args=("run-a",)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps and max(overlaps) == 1  # never two handlers inside for one run
    assert len(locks) == 0
    with locks.hold("run-a"), locks.hold("run-b"):  # different runs do not wait for each other
        assert len(locks) == 2
    assert len(locks) == 0
    with pytest.raises(RuntimeError), locks.hold("run-c"):
        raise RuntimeError("a failing reconcile releases its entry too")
    assert len(locks) == 0
