"""The only module that talks to the Kubernetes API through a client library (the official one).

kopf itself reads and patches the custom resources and posts Events; this module creates and
reads Jobs and reads TrainingRuns. Every call answers plain dicts (`_preload_content=False`),
the same shapes the builders produce and the tests compare.

API calls made here (charts/susy-operator's Role must grant them; tests/test_operator_rbac.py):
  create, get  batch/jobs
  patch        batch/jobs (spec.suspend: a run suspended or resumed without a queue)
  list, patch  kueue.x-k8s.io/workloads (spec.active: a queued run suspended or resumed)
  list, delete susy.dev/trainingruns, evaluationruns (a finished run past its TTL; what names it)
  get          susy.dev/trainingruns
  list         pods (a Job's, by the Job controller's job-name label: why they fail or cannot start)
  get          secrets, persistentvolumeclaims (metadata only: the allow label a run's Secret or claim needs)
  patch        susy.dev/trainingruns, evaluationruns (one annotation: wake the owner of a Job or pod)
  create, get, list, delete  susy.dev/trainingruns, evaluationruns (a ContinualTraining's children)
  patch        susy.dev/continualtrainings/status (a generation recorded before its children exist)
kopf watches (list, watch) the custom resources and the operator's own Jobs and pods.
and, for the uninstall hook (`python -m susy_operator release-finalizers`, same Role):
  list, patch  susy.dev/trainingruns, susy.dev/evaluationruns
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException

from susy_operator import crd

# kubernetes 37 imports its API classes lazily; importing BatchV1Api took 0.5 s inside the first
# handler (the first CR's create-to-Job latency). Import them with this module, at start-up.
BatchV1Api = kubernetes.client.BatchV1Api
CoreV1Api = kubernetes.client.CoreV1Api
CustomObjectsApi = kubernetes.client.CustomObjectsApi

_lock = threading.Lock()
_client: kubernetes.client.ApiClient | None = None


def configure(host: str | None = None) -> None:
    """Use an explicit API server (tests), or the configuration kopf's login already loaded.

    kopf's default login (`login_via_client`) loads the in-cluster or kubeconfig configuration
    into the client's default Configuration; we build on that so both share one identity.
    """
    global _client
    with _lock:
        if host is not None:
            configuration = kubernetes.client.Configuration()
            configuration.host = host
            configuration.verify_ssl = False
        else:
            configuration = kubernetes.client.Configuration.get_default_copy()
            if configuration.host in (None, "", "http://localhost"):
                try:
                    kubernetes.config.load_incluster_config(client_configuration=configuration)
                except kubernetes.config.ConfigException:
                    kubernetes.config.load_kube_config(client_configuration=configuration)
        _client = kubernetes.client.ApiClient(configuration)


def _api() -> kubernetes.client.ApiClient:
    if _client is None:
        configure()
    assert _client is not None
    return _client


def _json(response: Any) -> dict[str, Any]:
    return json.loads(response.data)


def create_job_if_absent(job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create the Job; if one of that name exists (409), return it instead. (job, created)."""
    namespace = job["metadata"]["namespace"]
    api = BatchV1Api(_api())
    try:
        return _json(api.create_namespaced_job(namespace, job, _preload_content=False)), True
    except ApiException as exc:
        if exc.status != 409:
            raise
    existing = read_job(namespace, job["metadata"]["name"])
    if existing is None:  # deleted between the two calls; the next reconcile creates it again
        raise ApiException(status=409, reason=f"Job {job['metadata']['name']} is being replaced")
    return existing, False


def read_job(namespace: str, name: str) -> dict[str, Any] | None:
    api = BatchV1Api(_api())
    try:
        return _json(api.read_namespaced_job(name, namespace, _preload_content=False))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def set_job_suspend(namespace: str, name: str, suspend: bool) -> bool:
    """Suspend (the Job controller removes its pods) or resume a Job. False when it is gone."""
    api = BatchV1Api(_api())
    return _applied(lambda: api.patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}},
                                                     _preload_content=False), tolerated=(404,))


# Kueue's Workload API (kubernetes-sigs/kueue apis/kueue/v1beta1/workload_types.go, `spec.active`;
# v1beta1 is served by every release from 0.6 to 0.19 and main, where v1beta2 is stored). Kueue
# labels the Workload of a Job with the Job's uid (pkg/controller/constants/constants.go, JobUIDLabel).
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta1"
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"


def set_kueue_workloads_active(namespace: str, job_uid: str, active: bool) -> int:
    """Set spec.active on the Kueue Workload(s) of one Job; how many there were. 0 without Kueue
    (its API is not served: 404) or before Kueue has made the Workload."""
    api = CustomObjectsApi(_api())
    try:
        listed = api.list_namespaced_custom_object(KUEUE_GROUP, KUEUE_VERSION, namespace, "workloads",
                                                   label_selector=f"{KUEUE_JOB_UID_LABEL}={job_uid}",
                                                   _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            return 0
        raise
    workloads = list(_json(listed).get("items") or [])
    for workload in workloads:
        api.patch_namespaced_custom_object(KUEUE_GROUP, KUEUE_VERSION, namespace, "workloads",
                                           workload["metadata"]["name"], {"spec": {"active": active}},
                                           _content_type="application/merge-patch+json", _preload_content=False)
    return len(workloads)


def list_job_pods(namespace: str, job_name: str) -> list[dict[str, Any]]:
    """The pods of a Job, by the label the Job controller puts on each (`batch.kubernetes.io/job-name`,
    set since Kubernetes 1.27: kubernetes pkg/controller/job/job_controller.go)."""
    api = CoreV1Api(_api())
    response = api.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}",
                                       _preload_content=False)
    return list(_json(response).get("items") or [])


def wake_owner(plural: str, namespace: str, name: str, observed: str) -> None:
    """Write what a Job or pod event saw on the owning custom resource (crd.ANNOTATION_OBSERVED).

    The change reaches kopf as an event on the owner, whose field handler reconciles it at once.
    An unchanged value changes nothing (no event). A missing owner is no error: it is being deleted.
    """
    merge_patch_custom_object(plural, namespace, name, {"metadata": {"annotations": {crd.ANNOTATION_OBSERVED: observed}}})


# Ask for the object's metadata alone (a meta.k8s.io PartialObjectMetadata): a Secret's data never
# reaches the operator, only its labels (kubernetes docs, concepts/overview/kubernetes-api
# "API concepts": "Alternate representations of resources"; an API server that cannot serve it
# answers with the whole object, as the second media type asks).
METADATA_ONLY = {"Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"}


def read_labels(kind: str, namespace: str, name: str) -> dict[str, str] | None:
    """The labels of a Secret or PersistentVolumeClaim (`kind`), None when it does not exist."""
    api = CoreV1Api(_api())
    try:
        if kind == "Secret":
            response = api.read_namespaced_secret(name, namespace, _headers=METADATA_ONLY, _preload_content=False)
        else:
            response = api.read_namespaced_persistent_volume_claim(name, namespace, _headers=METADATA_ONLY,
                                                                   _preload_content=False)
        metadata = _json(response)["metadata"]
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict(metadata.get("labels") or {})


def read_training_run(namespace: str, name: str) -> dict[str, Any] | None:
    return read_custom_object(crd.TRAINING_PLURAL, namespace, name)


def read_custom_object(child_plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    """A TrainingRun or EvaluationRun, None if absent."""
    api = CustomObjectsApi(_api())
    try:
        return _json(api.get_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, child_plural,
                                                      name, _preload_content=False))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def create_custom_object_if_absent(child_plural: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create a TrainingRun or EvaluationRun; if one of that name exists (409), return it. (object, created)."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    api = CustomObjectsApi(_api())
    try:
        return _json(api.create_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, child_plural, body,
                                                         _preload_content=False)), True
    except ApiException as exc:
        if exc.status != 409:
            raise
    existing = read_custom_object(child_plural, namespace, name)
    if existing is None:
        raise ApiException(status=409, reason=f"{child_plural} {name} is being replaced")
    return existing, False


def delete_custom_object(child_plural: str, namespace: str, name: str, uid: str | None = None) -> bool:
    """Delete a TrainingRun or EvaluationRun (its Jobs go with it, by ownerReferences); with `uid`,
    only that instance (a precondition: one re-created under the same name is not touched). False
    when it is gone (404), or with `uid` is another instance (409)."""
    api = CustomObjectsApi(_api())
    options = {"propagationPolicy": "Background", **({"preconditions": {"uid": uid}} if uid else {})}
    return _applied(lambda: api.delete_namespaced_custom_object(
        crd.GROUP, crd.VERSION, namespace, child_plural, name, body=options, _preload_content=False),
        tolerated=(404, 409) if uid else (404,))


def list_custom_objects(plural: str, namespace: str | None, label_selector: str | None = None) -> list[dict[str, Any]]:
    """Every TrainingRun or EvaluationRun in one namespace, or in all (namespace None); with
    `label_selector`, those it selects."""
    api = CustomObjectsApi(_api())
    selector = {"label_selector": label_selector} if label_selector else {}
    if namespace is None:
        listed = api.list_cluster_custom_object(crd.GROUP, crd.VERSION, plural, _preload_content=False, **selector)
    else:
        listed = api.list_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, plural,
                                                   _preload_content=False, **selector)
    return list(_json(listed).get("items") or [])


def merge_patch_custom_object(plural: str, namespace: str, name: str, patch: dict[str, Any]) -> bool:
    """Apply a JSON merge patch. False when the object changed since it was read (409) or is gone (404)."""
    api = CustomObjectsApi(_api())
    return _applied(lambda: api.patch_namespaced_custom_object(
        crd.GROUP, crd.VERSION, namespace, plural, name, patch, _content_type="application/merge-patch+json",
        _preload_content=False), tolerated=(404, 409))


def _applied(call: Callable[[], Any], *, tolerated: tuple[int, ...]) -> bool:
    """Make one write; False when the API answers one of `tolerated` (the object is gone: 404, or
    changed since it was read: 409), any other refusal raised."""
    try:
        call()
    except ApiException as exc:
        if exc.status in tolerated:
            return False
        raise
    return True


def patch_continual_training_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge-patch a ContinualTraining's status now, not when its handler returns: the generation
    it starts is recorded before its first child exists (continual_training.py)."""
    api = CustomObjectsApi(_api())
    api.patch_namespaced_custom_object_status(crd.GROUP, crd.VERSION, namespace, crd.CONTINUAL_PLURAL, name,
                                              {"status": status}, _content_type="application/merge-patch+json",
                                              _preload_content=False)


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])
