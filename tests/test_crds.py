"""The CRDs in manifests/crds/: the examples validate, bad custom resources are rejected, the CEL
rules parse and decide their listed cases, and the schema agrees with the operator's own checks.

No API server here, so the OpenAPI v3 schema is checked with a JSON-schema validator (after the
OpenAPI -> JSON-schema translation in support/crdschema.py, which the API emulator uses too), and
the `x-kubernetes-validations` rules with cel-python when it is installed; the cases of every rule
are listed in CEL_CASES either way, and a test fails if a rule is added to a CRD without cases.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from susy_operator import crd, spec as spec_lib
from support import crdschema
from support.crdschema import to_json_schema

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "manifests" / "crds"
EXAMPLES = ROOT / "manifests" / "examples"


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


CRD_FILES = {crd.TRAINING_KIND: CRDS / "trainingruns.yaml", crd.EVALUATION_KIND: CRDS / "evaluationruns.yaml",
             crd.CONTINUAL_KIND: CRDS / "continualtrainings.yaml"}
PARSERS = {crd.TRAINING_KIND: spec_lib.parse_training_run, crd.EVALUATION_KIND: spec_lib.parse_evaluation_run,
           crd.CONTINUAL_KIND: spec_lib.parse_continual_training}


def openapi_schema(kind: str) -> dict[str, Any]:
    (version,) = load(CRD_FILES[kind])["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def validator(kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(to_json_schema(openapi_schema(kind)))


def errors(kind: str, obj: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(kind).iter_errors(obj)]


def walk(node: Any, path: str = "") -> Any:
    """(path, schema node) for every node of a schema."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.get("properties", {}).items():
            yield from walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from walk(node["additionalProperties"], f"{path}{{}}")


# --- the CRDs themselves --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_crd_shape(kind: str) -> None:
    doc = load(CRD_FILES[kind])
    assert doc["apiVersion"] == "apiextensions.k8s.io/v1" and doc["kind"] == "CustomResourceDefinition"
    names = doc["spec"]["names"]
    plural = {crd.TRAINING_KIND: crd.TRAINING_PLURAL, crd.EVALUATION_KIND: crd.EVALUATION_PLURAL,
              crd.CONTINUAL_KIND: crd.CONTINUAL_PLURAL}[kind]
    assert doc["metadata"]["name"] == f"{plural}.{crd.GROUP}"
    assert (doc["spec"]["group"], doc["spec"]["scope"]) == (crd.GROUP, "Namespaced")
    assert (names["kind"], names["plural"]) == (kind, plural)
    assert names["shortNames"] == [{"TrainingRun": "tr", "EvaluationRun": "er", "ContinualTraining": "ct"}[kind]]
    (version,) = doc["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == (crd.VERSION, True, True)
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    expected = {"TrainingRun": ["Phase", "Model", "Rows", "Epoch", "Val-AUC", "Age"],
                "EvaluationRun": ["Phase", "Shards", "Progress", "Accuracy", "AUC", "Best", "Age"],
                "ContinualTraining": ["Generation", "Champion", "Metric", "Last-Decision", "Age"]}[kind]
    assert columns == expected
    # kopf's status writes survive pruning (STYLE.md, kopf anchor: docs/walkthrough/updates.rst).
    assert version["schema"]["openAPIV3Schema"]["properties"]["status"]["x-kubernetes-preserve-unknown-fields"]


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_every_spec_field_is_typed_and_described(kind: str) -> None:
    spec_schema = openapi_schema(kind)["properties"]["spec"]
    for path, node in walk(spec_schema, "spec"):
        assert "type" in node or "anyOf" in node, f"{path} has no type"
        if path.count(".") >= 1 and not path.endswith(("[]", "{}")):
            assert node.get("description", "").split(" ")[0].rstrip(":") in (path.rsplit(".", 1)[-1], ), \
                f"{path}: description should start with the field's name, got {node.get('description')!r}"
        if node.get("type") == "integer":
            assert "minimum" in node, f"{path} needs a lower bound"
        if node.get("type") == "string" and "enum" not in node and "format" not in node:
            assert "minLength" in node or "pattern" in node or path.endswith(".value"), f"{path} needs a bound"


def test_crds_are_valid_kubernetes_objects() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = kubernetes_validate.latest_version()
    for path in CRD_FILES.values():
        kubernetes_validate.validate(load(path), version, strict=True)


def test_schema_defaults_match_the_operator() -> None:
    tr = openapi_schema(crd.TRAINING_KIND)["properties"]["spec"]["properties"]
    er = openapi_schema(crd.EVALUATION_KIND)["properties"]["spec"]["properties"]
    assert tr["dataset"]["properties"]["skip"]["default"] == spec_lib.DEFAULT_SKIP
    assert tr["dataset"]["properties"]["limit"]["default"] == spec_lib.DEFAULT_LIMIT
    # No topic default: the operator gives each run its own (tenancy.default_topic), which the
    # schema cannot compute (it does not know the namespace).
    assert "default" not in tr["kafka"]["properties"]["topic"]
    assert spec_lib.parse_training_run({"dataset": {"uri": "x.csv"}}).kafka.topic is None
    assert tr["kafka"]["properties"]["partitions"]["default"] == spec_lib.DEFAULT_PARTITIONS
    assert tr["kafka"]["properties"]["partitions"]["maximum"] == spec_lib.MAX_PARTITIONS
    # No schema default: a warm start must see an unset recipe (it then takes the parent's); the
    # operator applies DEFAULT_RECIPE otherwise.
    assert "default" not in tr["model"]["properties"]["recipe"]
    assert spec_lib.parse_training_run({"dataset": {"uri": "x.csv"}}).model.recipe == spec_lib.DEFAULT_RECIPE
    assert tr["model"]["properties"]["recipe"]["enum"] == list(spec_lib.RECIPES)
    assert tr["reader"]["default"] == spec_lib.DEFAULT_READER
    assert tr["reader"]["enum"] == list(spec_lib.READERS)
    ct = openapi_schema(crd.CONTINUAL_KIND)["properties"]["spec"]["properties"]
    assert ct["reader"]["enum"] == list(spec_lib.READERS) and ct["reader"]["default"] == spec_lib.DEFAULT_READER
    assert ct["historyLimit"]["default"] == spec_lib.DEFAULT_HISTORY_LIMIT
    assert ct["kafka"]["properties"]["rowsPerMessage"]["default"] == spec_lib.DEFAULT_ROWS_PER_MESSAGE
    assert ct["evaluation"]["properties"]["metric"]["enum"] == list(spec_lib.CONTINUAL_METRICS)
    assert tr["runPolicy"]["properties"]["backoffLimit"]["default"] == spec_lib.DEFAULT_BACKOFF_LIMIT
    for schema in (tr, er):
        policy = schema["runPolicy"]["properties"]
        assert policy["activeDeadlineSeconds"]["default"] == spec_lib.DEFAULT_ACTIVE_DEADLINE_SECONDS
        assert policy["ttlSecondsAfterFinished"]["default"] == spec_lib.DEFAULT_TTL_SECONDS_AFTER_FINISHED
    assert er["shards"]["default"] == spec_lib.DEFAULT_SHARDS
    assert er["shards"]["maximum"] == spec_lib.MAX_SHARDS
    assert er["chunkRows"]["default"] == spec_lib.DEFAULT_CHUNK_ROWS
    assert er["precision"]["default"] == spec_lib.DEFAULT_PRECISION
    assert er["precision"]["enum"] == list(spec_lib.PRECISIONS)
    assert er["allowBf16"]["default"] is False
    assert er["backoffLimitPerIndex"]["default"] == spec_lib.DEFAULT_BACKOFF_LIMIT_PER_INDEX
    assert er["dataset"]["properties"]["uris"]["maxItems"] == spec_lib.MAX_URIS
    assert er["dataset"]["properties"]["skip"]["default"] == spec_lib.DEFAULT_SKIP
    assert "default" not in er["dataset"]["properties"]["limit"]  # every row to the end
    for schema in (tr, er):
        assert schema["volumes"]["maxItems"] == schema["volumeMounts"]["maxItems"] == spec_lib.MAX_VOLUMES
        sources = set(schema["volumes"]["items"]["properties"]) - {"name"}
        assert sources == set(spec_lib.VOLUME_TYPES)


# --- examples ---------------------------------------------------------------------------------------

# The CRs of manifests/examples/ and of its dataset walk-throughs (pvc/, s3/: those folders also
# hold the PVC, Secret and Job that prepare the data, which are no CRs).
EXAMPLE_FILES = sorted([*EXAMPLES.glob("*.yaml"), *EXAMPLES.glob("*/evaluationrun.yaml")])


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLE_FILES}
    assert {"trainingrun.yaml", "evaluationrun.yaml", "trainingrun-full.yaml", "evaluationrun-full.yaml"} <= names


def test_every_example_evaluationrun_scores_only_held_out_rows() -> None:
    """The sample's rows 0-10978 are its training rows (issue 18 item 3): an example that scores
    the sample skips them, and no example TrainingRun trains past them."""
    for path in [*EXAMPLE_FILES, *sorted((ROOT / "hack" / "e2e").glob("*.yaml"))]:
        doc = load(path)
        if doc["kind"] == crd.CONTINUAL_KIND:  # trains on a stream; its held-out set is an EvaluationRun's
            ds = doc["spec"]["evaluation"]["dataset"]
            assert ds["uris"] == ["/opt/susy/data/susy-sample.csv.gz"] and ds.get("skip", 0) >= 10_979, path
            continue
        ds = doc["spec"].get("dataset") or {"skip": 0, "limit": 0}  # spec.source: rows already in Kafka
        if doc["kind"] == crd.TRAINING_KIND:
            assert ds.get("skip", 0) + ds.get("limit", spec_lib.DEFAULT_LIMIT) <= 10_979, path
        elif any(u.endswith("susy-sample.csv.gz") for u in ds["uris"]):
            assert ds["uris"] == ["/opt/susy/data/susy-sample.csv.gz"] and ds.get("skip", 0) >= 10_979, path
        else:  # `scale` output: the sample's held-out rows only
            assert all("/data/" in u or u.startswith("s3://") for u in ds["uris"]), path


def test_every_file_an_example_names_exists() -> None:
    """A comment such as `see s3/dataset.yaml` names a file beside it, under manifests/examples/,
    or from the repository's root (the examples were renamed once, and their comments were not)."""
    import re

    for path in sorted([*EXAMPLES.rglob("*.yaml"), *(ROOT / "hack" / "e2e").glob("*.yaml")]):
        for name in re.findall(r"[\w./-]+\.yaml", path.read_text()):
            assert any((base / name).is_file() for base in (path.parent, EXAMPLES, ROOT)), f"{path.name}: {name}"


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_validates_against_its_crd_and_the_operator(path: Path) -> None:
    doc = load(path)
    assert doc["apiVersion"] == crd.API_VERSION
    assert errors(doc["kind"], doc) == []
    PARSERS[doc["kind"]](doc["spec"])  # the operator accepts it too
    for rule_path, rule in cel_rules(doc["kind"]):
        if "oldSelf" not in rule["rule"] and value_at(doc, rule_path) is not None:  # absent, or a transition rule: not run on create
            assert evaluate_rule(rule["rule"], value_at(doc, rule_path), None), f"{path.name}: {rule['rule']}"


def test_the_leaderboard_example_names_several_models_and_their_ensemble() -> None:
    spec = load(EXAMPLES / "evaluationrun-leaderboard.yaml")["spec"]
    assert "model" not in spec and len(spec["models"]) >= 2 and spec["ensemble"] == "mean"


def test_full_examples_set_every_spec_field() -> None:
    for name, kind in (("trainingrun-full.yaml", crd.TRAINING_KIND), ("evaluationrun-full.yaml", crd.EVALUATION_KIND)):
        spec = load(EXAMPLES / name)["spec"]
        schema = openapi_schema(kind)["properties"]["spec"]
        for key, node in schema["properties"].items():
            # An EvaluationRun names its model(s) one way: the full example by `model`, the
            # leaderboard example by `models` and `ensemble`.
            # A TrainingRun reads a file (dataset) or offsets already in Kafka (source): the full
            # example the former, trainingrun-offsets.yaml the latter.
            assert key in spec or (kind == crd.EVALUATION_KIND and key in ("model", "models", "ensemble")) \
                or (kind == crd.TRAINING_KIND and key == "source"), \
                f"{name} lacks spec.{key}"
            if node.get("type") == "object" and "properties" in node and key in spec and key not in ("model",):
                missing = set(node["properties"]) - set(spec[key])
                assert not missing, f"{name} lacks spec.{key}.{sorted(missing)}"


# --- bad custom resources ---------------------------------------------------------------------------

def tr(**spec: Any) -> dict[str, Any]:
    base = {"dataset": {"uri": "/data/susy.csv.gz"}}
    base.update(spec)
    return {"apiVersion": crd.API_VERSION, "kind": crd.TRAINING_KIND, "metadata": {"name": "t"}, "spec": base}


def er(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": {"trainingRun": "t"}, "dataset": {"uris": ["/data/test.csv"]}}
    base.update(spec)
    return {"apiVersion": crd.API_VERSION, "kind": crd.EVALUATION_KIND, "metadata": {"name": "e"}, "spec": base}


BAD_BY_SCHEMA = {
    "tr: no spec": {"apiVersion": crd.API_VERSION, "kind": crd.TRAINING_KIND, "metadata": {"name": "t"}},
    "tr: empty uri": tr(dataset={"uri": ""}),
    "tr: negative skip": tr(dataset={"uri": "x", "skip": -1}),
    "tr: zero limit": tr(dataset={"uri": "x", "limit": 0}),
    "tr: zero partitions": tr(kafka={"partitions": 0}),
    "tr: 65 partitions": tr(kafka={"partitions": 65}),
    "tr: topic with a space": tr(kafka={"topic": "my topic"}),
    # Apache Kafka's Topic.validate refuses these (clients/.../common/internals/Topic.java).
    "tr: topic .": tr(kafka={"topic": "."}),
    "tr: topic ..": tr(kafka={"topic": ".."}),
    "tr: topic of periods only": tr(kafka={"topic": "..."}),
    "tr: topic of 250 characters": tr(kafka={"topic": "t" * 250}),
    "tr: unknown recipe": tr(model={"recipe": "fancy"}),
    "tr: zero learning rate": tr(model={"learningRate": 0}),
    "tr: dropout 1": tr(model={"dropout": 1.0}),
    "tr: empty hidden": tr(model={"hidden": []}),
    "tr: zero epochs": tr(epochs=0),
    "tr: string epochs": tr(epochs="ten"),
    "tr: unknown reader": tr(reader="librdkafka"),
    "tr: bad resource quantity": tr(resources={"trainer": {"limits": {"memory": "lots"}}}),
    "tr: env without name": tr(env=[{"value": "x"}]),
    "tr: env bad name": tr(env=[{"name": "1X", "value": "x"}]),
    "tr: deadline below a minute": tr(runPolicy={"activeDeadlineSeconds": 10}),
    "er: empty models": er(model=None, models=[]),
    "er: nine models": er(model=None, models=[{"trainingRun": "t"}] * 9),
    "er: unknown ensemble": er(model=None, models=[{"trainingRun": "t"}, {"trainingRun": "u"}], ensemble="vote"),
    "er: bad id in models": er(model=None, models=[{"id": "not-hex"}]),
    "er: no dataset": er(dataset=None),
    "er: no uris": er(dataset={"uris": []}),
    "er: zero shards": er(shards=0),
    "er: 1001 shards": er(shards=1001),
    "er: zero parallelism": er(parallelism=0),
    "er: bad model id": er(model={"id": "not-hex"}),
    "er: bad training run name": er(model={"trainingRun": "Not_A_Name"}),
    "er: zero chunk rows": er(chunkRows=0),
    "er: zero stripe rows": er(stripeRows=0),
    "er: backoffLimitPerIndex 11": er(backoffLimitPerIndex=11),
    "er: negative skip": er(dataset={"uris": ["/d.csv"], "skip": -1}),
    "er: zero limit": er(dataset={"uris": ["/d.csv"], "limit": 0}),
    "er: secret name with a slash": er(dataset={"uris": ["/d.csv"], "secretName": "a/b"}),
    "tr: secret name upper case": tr(dataset={"uri": "x", "secretName": "Creds"}),
    "tr: relative mount path": tr(volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "c"}}],
                                  volumeMounts=[{"name": "data", "mountPath": "data"}]),
}
# Refused by a CEL rule (x-kubernetes-validations) after pruning, which a plain JSON-schema
# validator does not run: the emulator's admission and the operator refuse them.
BAD_BY_CEL = {
    "er: no model": er(model=None),
    "er: model and models": er(models=[{"trainingRun": "t"}]),
    "er: ensemble of one": er(model=None, models=[{"trainingRun": "t"}], ensemble="mean"),
    "er: ensemble with model": er(ensemble="mean"),
    "er: models entry named two ways": er(model=None, models=[{"trainingRun": "t", "id": "0" * 32}]),
    "er: volume without a source": er(volumes=[{"name": "data"}]),
    "er: emptyDir volume": er(volumes=[{"name": "data", "emptyDir": {}}]),
    "er: volume with two sources": er(volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "c"},
                                                "hostPath": {"path": "/srv"}}]),
    "er: volume named scratch": er(volumes=[{"name": "scratch", "persistentVolumeClaim": {"claimName": "c"}}]),
    "er: mount of no volume": er(volumeMounts=[{"name": "data", "mountPath": "/data"}]),
    "er: mount at /tmp": er(volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "c"}}],
                            volumeMounts=[{"name": "data", "mountPath": "/tmp"}]),
    "tr: mount under /tmp": tr(volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "c"}}],
                               volumeMounts=[{"name": "data", "mountPath": "/tmp/data"}]),
    "tr: mount path with ..": tr(volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "c"}}],
                                 volumeMounts=[{"name": "data", "mountPath": "/data/../tmp"}]),
}
for _case in [*BAD_BY_SCHEMA.values(), *BAD_BY_CEL.values()]:
    for _key in [k for k, v in (_case.get("spec") or {}).items() if v is None]:
        del _case["spec"][_key]


@pytest.mark.parametrize("case", sorted(BAD_BY_SCHEMA))
def test_bad_resource_is_rejected_by_the_schema_and_the_operator(case: str) -> None:
    doc = BAD_BY_SCHEMA[case]
    assert errors(doc["kind"], doc), f"the schema accepts {case}"
    if "spec" in doc:  # the operator's own validation (for clusters without the schema) agrees
        parse = spec_lib.parse_training_run if doc["kind"] == crd.TRAINING_KIND else spec_lib.parse_evaluation_run
        with pytest.raises(spec_lib.SpecError):
            parse(doc["spec"])


# --- CEL rules (x-kubernetes-validations) --------------------------------------------------------------

def cel_rules(kind: str) -> list[tuple[str, dict[str, Any]]]:
    """(JSON path of the node the rule applies to, rule) for every rule of a CRD."""
    rules = []
    for path, node in walk(openapi_schema(kind)):
        for rule in node.get("x-kubernetes-validations") or []:
            rules.append((path, rule))
    return rules


def value_at(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for part in [p for p in path.split(".") if p]:
        value = value.get(part) if isinstance(value, dict) else None
    return value


NAME_RULE = "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
# spec.suspend and spec.ttlSecondsAfterFinished change mid-run (issue 26); every other field of the
# spec, as the schema lists them (queueName and the priorities first), is compared one by one.
MUTABLE_SPEC_FIELDS = ("suspend", "ttlSecondsAfterFinished")
IMMUTABLE = "self == oldSelf"  # spec.model.warmStart


def immutable_rule(kind: str) -> str:
    fields = [f for f in openapi_schema(kind)["properties"]["spec"]["properties"] if f not in MUTABLE_SPEC_FIELDS]
    fields = [*(f for f in fields if f in SCHEDULING_FIELDS), *(f for f in fields if f not in SCHEDULING_FIELDS)]
    return " && ".join(f"has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f})"
                       for f in fields)


SCHEDULING_FIELDS = ("queueName", "priorityClassName", "workloadPriorityClassName")
IMMUTABLE_TR = immutable_rule(crd.TRAINING_KIND)
IMMUTABLE_ER = immutable_rule(crd.EVALUATION_KIND)
PARALLELISM = "!has(self.parallelism) || self.parallelism <= self.shards"
ONE_MODEL = "[has(self.id), has(self.timestamp), has(self.trainingRun), has(self.alias)].filter(x, x).size() == 1"
RESERVED_ENV = ("self.all(e, !(e.name in ['KAFKA_BOOTSTRAP', 'MONGODB_URI', 'SUSY_DATABASE', 'SUSY_NAMESPACE', "
                "'SUSY_RUN_NAME', 'JOB_COMPLETION_INDEX', 'SUSY_READER', 'SUSY_DATA_SECRET']))")

ONE_SOURCE = "[has(self.persistentVolumeClaim), has(self.configMap), has(self.hostPath)].filter(x, x).size() == 1"
OWN_VOLUMES = "!(self.name in ['scratch', 'kafka-client', 'store-ca'])"
NOT_TMP = ("self.mountPath != '/tmp' && !self.mountPath.startsWith('/tmp/') && self.mountPath != '/etc/susy' "
           "&& !self.mountPath.startsWith('/etc/susy/')")
NO_DOTS = "!self.mountPath.matches('(^|/)[.][.]?(/|$)')"
NO_DOTDOT = "!self.matches('(^|/)[.][.](/|$)')"
MOUNTS_NAME_VOLUMES = ("!has(self.volumeMounts) || self.volumeMounts.all(m, has(self.volumes) && "
                       "self.volumes.exists(v, v.name == m.name))")

MODEL_OR_MODELS = "has(self.model) != has(self.models)"
DATASET_OR_SOURCE = "has(self.dataset) != has(self.source)"
PARTITION_ONCE = "self.all(a, self.filter(b, b.partition == a.partition).size() == 1)"
START_NOT_AFTER_END = "!has(self.start) || self.start <= self.end"
CONTINUAL_NAME_RULE = "self.metadata.name.size() <= 50 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
A_TRIGGER = "has(self.everyRows) || has(self.everySeconds)"
ENSEMBLE_RULE = "!has(self.ensemble) || (has(self.models) && size(self.models) >= 2)"

# Every rule with its cases: (self, oldSelf or None for a create, expected).
CEL_CASES: dict[str, list[tuple[Any, Any, bool]]] = {
    DATASET_OR_SOURCE: [
        ({"dataset": {"uri": "a"}}, None, True),
        ({"source": {"kafka": {"topic": "t", "offsets": [{"partition": 0, "end": 1}]}}}, None, True),
        ({}, None, False),
        ({"dataset": {"uri": "a"}, "source": {"kafka": {"topic": "t", "offsets": []}}}, None, False),
    ],
    PARTITION_ONCE: [
        ([{"partition": 0, "end": 5}, {"partition": 1, "end": 5}], None, True),
        ([{"partition": 0, "end": 5}, {"partition": 0, "end": 9}], None, False),
    ],
    START_NOT_AFTER_END: [
        ({"partition": 0, "end": 5}, None, True),
        ({"partition": 0, "start": 5, "end": 5}, None, True),
        ({"partition": 0, "start": 6, "end": 5}, None, False),
    ],
    CONTINUAL_NAME_RULE: [
        ({"metadata": {"name": "live"}}, None, True),
        ({"metadata": {"name": "a" * 50}}, None, True),
        ({"metadata": {"name": "a" * 51}}, None, False),
        ({"metadata": {"name": "9lives"}}, None, False),
    ],
    A_TRIGGER: [
        ({"everyRows": 5}, None, True),
        ({"everySeconds": 5}, None, True),
        ({"everyRows": 5, "everySeconds": 5}, None, True),
        ({}, None, False),
    ],
    MODEL_OR_MODELS: [
        ({"model": {"trainingRun": "t"}}, None, True),
        ({"models": [{"trainingRun": "t"}]}, None, True),
        ({"model": {"trainingRun": "t"}, "models": [{"trainingRun": "t"}]}, None, False),
        ({"dataset": {"uris": ["/d.csv"]}}, None, False),
    ],
    ENSEMBLE_RULE: [
        ({"models": [{"id": "0" * 32}]}, None, True),
        ({"models": [{"id": "0" * 32}, {"trainingRun": "t"}], "ensemble": "mean"}, None, True),
        ({"models": [{"id": "0" * 32}], "ensemble": "mean"}, None, False),
        ({"model": {"id": "0" * 32}, "ensemble": "mean"}, None, False),
    ],
    NAME_RULE: [
        ({"metadata": {"name": "susy-train"}}, None, True),
        ({"metadata": {"name": "a" * 63}}, None, True),
        ({"metadata": {"name": "a" * 64}}, None, False),
        ({"metadata": {"name": "9lives"}}, None, False),
        ({"metadata": {"name": "has.dots"}}, None, False),
    ],
    IMMUTABLE: [
        ({"id": "0" * 32}, {"id": "0" * 32}, True),
        ({"id": "1" * 32}, {"id": "0" * 32}, False),
    ],
    IMMUTABLE_ER: [
        ({"shards": 3}, {"shards": 3}, True),
        ({"shards": 4}, {"shards": 3}, False),
        ({"shards": 3, "suspend": True}, {"shards": 3}, True),
        ({"shards": 3, "suspend": False, "ttlSecondsAfterFinished": 60}, {"shards": 3, "suspend": True}, True),
        ({"shards": 3, "queueName": "q"}, {"shards": 3}, False),
        ({"shards": 3}, {"shards": 3, "priorityClassName": "p"}, False),
    ],
    IMMUTABLE_TR: [
        ({"dataset": {"uri": "a"}}, {"dataset": {"uri": "a"}}, True),
        ({"dataset": {"uri": "b"}}, {"dataset": {"uri": "a"}}, False),
        ({"dataset": {"uri": "a"}, "suspend": True}, {"dataset": {"uri": "a"}, "suspend": False}, True),
        ({"dataset": {"uri": "a"}, "epochs": 3}, {"dataset": {"uri": "a"}}, False),
        ({"dataset": {"uri": "a"}, "queueName": "q"}, {"dataset": {"uri": "a"}, "queueName": "r"}, False),
    ],
    PARALLELISM: [
        ({"shards": 3}, None, True),
        ({"shards": 3, "parallelism": 3}, None, True),
        ({"shards": 3, "parallelism": 1}, None, True),
        ({"shards": 3, "parallelism": 4}, None, False),
    ],
    ONE_MODEL: [
        ({"id": "0" * 32}, None, True),
        ({"timestamp": "2026-11-24T10:00:00Z"}, None, True),
        ({"trainingRun": "t"}, None, True),
        ({"alias": "champion"}, None, True),
        ({}, None, False),
        ({"id": "0" * 32, "alias": "champion"}, None, False),
        ({"id": "0" * 32, "trainingRun": "t"}, None, False),
        ({"id": "0" * 32, "timestamp": "2026-11-24T10:00:00Z", "trainingRun": "t"}, None, False),
    ],
    RESERVED_ENV: [
        ([], None, True),
        ([{"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"}], None, True),
        ([{"name": "MONGODB_URI", "value": "mongodb://evil"}], None, False),
        ([{"name": "A", "value": "1"}, {"name": "KAFKA_BOOTSTRAP", "value": "x"}], None, False),
        ([{"name": "SUSY_READER", "value": "kafka-python"}], None, False),
        ([{"name": "SUSY_DATA_SECRET", "value": "s"}], None, False),
        ([{"name": "SUSY_NAMESPACE", "value": "another-team"}], None, False),
    ],
    ONE_SOURCE: [
        ({"name": "d", "persistentVolumeClaim": {"claimName": "c"}}, None, True),
        ({"name": "d", "hostPath": {"path": "/srv"}}, None, True),
        ({"name": "d"}, None, False),
        ({"name": "d", "configMap": {"name": "c"}, "hostPath": {"path": "/srv"}}, None, False),
    ],
    OWN_VOLUMES: [
        ({"name": "data"}, None, True),
        ({"name": "scratch"}, None, False),
        ({"name": "kafka-client"}, None, False),
    ],
    NOT_TMP: [
        ({"mountPath": "/data"}, None, True),
        ({"mountPath": "/tmpdata"}, None, True),
        ({"mountPath": "/tmp"}, None, False),
        ({"mountPath": "/tmp/"}, None, False),
        ({"mountPath": "/tmp/x"}, None, False),
        ({"mountPath": "/etc/susy/kafka"}, None, False),
    ],
    NO_DOTS: [
        ({"mountPath": "/data/.cache"}, None, True),
        ({"mountPath": "/data/../tmp"}, None, False),
        ({"mountPath": "/./tmp"}, None, False),
        ({"mountPath": "/data/.."}, None, False),
    ],
    NO_DOTDOT: [
        ("sub/dir", None, True),
        ("..x", None, True),
        ("../etc", None, False),
        ("a/../../b", None, False),
    ],
    MOUNTS_NAME_VOLUMES: [
        ({}, None, True),
        ({"volumes": [{"name": "d"}], "volumeMounts": [{"name": "d", "mountPath": "/d"}]}, None, True),
        ({"volumeMounts": [{"name": "d", "mountPath": "/d"}]}, None, False),
        ({"volumes": [{"name": "e"}], "volumeMounts": [{"name": "d", "mountPath": "/d"}]}, None, False),
    ],
}

# The same rules in Python, for when cel-python is not installed (and as a cross-check when it is).
PYTHON_EQUIVALENTS = {
    NAME_RULE: lambda s, o: len(s["metadata"]["name"]) <= 63
    and spec_lib.re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", s["metadata"]["name"]) is not None,
    IMMUTABLE: lambda s, o: o is None or s == o,
    **{rule: (lambda s, o: o is None or {k: v for k, v in s.items() if k not in MUTABLE_SPEC_FIELDS}
              == {k: v for k, v in o.items() if k not in MUTABLE_SPEC_FIELDS})
       for rule in (IMMUTABLE_TR, IMMUTABLE_ER)},
    MODEL_OR_MODELS: lambda s, o: ("model" in s) != ("models" in s),
    DATASET_OR_SOURCE: lambda s, o: ("dataset" in s) != ("source" in s),
    PARTITION_ONCE: lambda s, o: len({e["partition"] for e in s}) == len(s),
    START_NOT_AFTER_END: lambda s, o: "start" not in s or s["start"] <= s["end"],
    CONTINUAL_NAME_RULE: lambda s, o: len(s["metadata"]["name"]) <= 50
    and spec_lib.re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", s["metadata"]["name"]) is not None,
    A_TRIGGER: lambda s, o: "everyRows" in s or "everySeconds" in s,
    ENSEMBLE_RULE: lambda s, o: "ensemble" not in s or len(s.get("models") or ()) >= 2,
    PARALLELISM: lambda s, o: "parallelism" not in s or s["parallelism"] <= s["shards"],
    ONE_MODEL: lambda s, o: sum(k in s for k in ("id", "timestamp", "trainingRun", "alias")) == 1,
    RESERVED_ENV: lambda s, o: all(e["name"] not in crd.RESERVED_ENV for e in s),
    ONE_SOURCE: lambda s, o: sum(k in s for k in spec_lib.VOLUME_TYPES) == 1,
    OWN_VOLUMES: lambda s, o: s["name"] not in spec_lib.RESERVED_VOLUME_NAMES,
    NOT_TMP: lambda s, o: not any(s["mountPath"] == r or s["mountPath"].startswith(r + "/")
                                  for r in spec_lib.RESERVED_MOUNT_PATHS),
    NO_DOTS: lambda s, o: not any(p in (".", "..") for p in s["mountPath"].split("/")),
    NO_DOTDOT: lambda s, o: ".." not in s.split("/"),
    MOUNTS_NAME_VOLUMES: lambda s, o: all(m["name"] in {v["name"] for v in s.get("volumes", [])}
                                          for m in s.get("volumeMounts", [])),
}


def evaluate_rule(rule: str, self_value: Any, old_value: Any) -> bool:
    """The emulator's CEL evaluation (support/crdschema.py), or the Python equivalent without cel-python."""
    try:
        import celpy  # noqa: F401
    except ImportError:
        return bool(PYTHON_EQUIVALENTS[rule](self_value, old_value))
    return crdschema.evaluate_rule(rule, self_value, old_value)


def all_rules() -> set[str]:
    return {rule["rule"] for kind in CRD_FILES for _, rule in cel_rules(kind)}


def test_every_cel_rule_has_cases_and_a_message() -> None:
    assert all_rules() == set(CEL_CASES), "list the cases of every x-kubernetes-validations rule in CEL_CASES"
    for kind in CRD_FILES:
        for path, rule in cel_rules(kind):
            assert rule.get("message"), f"{kind}{path}: {rule['rule']} has no message"


def test_cel_rules_parse() -> None:
    celpy = pytest.importorskip("celpy", reason="cel-python is not installed: rules checked by PYTHON_EQUIVALENTS")
    env = celpy.Environment()
    for rule in sorted(all_rules()):
        env.compile(rule)


@pytest.mark.parametrize("rule", sorted(CEL_CASES))
def test_cel_rule_cases(rule: str) -> None:
    for self_value, old_value, expected in CEL_CASES[rule]:
        assert evaluate_rule(rule, self_value, old_value) is expected, (rule, self_value, old_value)
        assert bool(PYTHON_EQUIVALENTS[rule](self_value, old_value)) is expected, (rule, self_value)


@pytest.mark.parametrize("case", sorted(BAD_BY_CEL))
def test_volume_rules_are_also_enforced_by_the_operator(case: str) -> None:
    doc = BAD_BY_CEL[case]
    parse = spec_lib.parse_training_run if doc["kind"] == crd.TRAINING_KIND else spec_lib.parse_evaluation_run
    with pytest.raises(spec_lib.SpecError):
        parse(doc["spec"])


def test_cross_field_rules_are_also_enforced_by_the_operator() -> None:
    """Objects stored before a rule existed (Helm never upgrades CRDs) rely on spec.py for the same rules."""
    with pytest.raises(spec_lib.SpecError, match="parallelism"):
        spec_lib.parse_evaluation_run(er(shards=3, parallelism=4)["spec"])
    with pytest.raises(spec_lib.SpecError, match="exactly one way"):
        spec_lib.parse_evaluation_run(er(model={"id": "0" * 32, "trainingRun": "t"})["spec"])
    with pytest.raises(spec_lib.SpecError, match="exactly one way"):
        spec_lib.parse_evaluation_run(er(model={})["spec"])
    with pytest.raises(spec_lib.SpecError, match="set by the operator"):
        spec_lib.parse_training_run(tr(env=[{"name": "MONGODB_URI", "value": "x"}])["spec"])
    bad = copy.deepcopy(er(shards=3, parallelism=4))
    assert not errors(crd.EVALUATION_KIND, bad), "cross-field rules are CEL, not JSON schema"


# --- the API emulator's admission (support/crdschema.py) agrees -----------------------------------------

ADMISSION = {doc["spec"]["names"]["kind"]: crdschema.CustomResourceSchema.from_crd(doc)
             for doc in crdschema.load_crds()}


@pytest.mark.parametrize("case", sorted(BAD_BY_SCHEMA) + sorted(BAD_BY_CEL))
def test_the_emulator_refuses_every_bad_resource(case: str) -> None:
    doc = BAD_BY_SCHEMA.get(case) or BAD_BY_CEL[case]
    _, found = ADMISSION[doc["kind"]].admit(doc)
    assert found, f"the emulator admits {case}"


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_the_emulator_admits_every_example_unchanged_but_for_defaults(path: Path) -> None:
    doc = load(path)
    admitted, found = ADMISSION[doc["kind"]].admit(doc)
    assert found == []
    assert admitted["metadata"] == doc["metadata"]
    for key, value in doc["spec"].items():  # defaults only add
        assert admitted["spec"][key] == value or (
            isinstance(value, dict) and value.items() <= admitted["spec"][key].items())
