"""The operator's Prometheus metrics (prometheus-client), served on a port of their own.

`serve(port)` starts the HTTP server (`/metrics`) once, from the startup handler; SUSY_METRICS_PORT
picks the port (the chart's `metrics.port`, 8000 by default; 0: no server). Every name starts
with `susy_operator_`. Labels are bounded: kind, phase, step, source kind, outcome, each from a
short fixed list; no run name, namespace or model id is ever a label (a run is one line in
`kubectl get`, not a time series). The dashboard (charts/susy-operator/dashboards/) queries only
these names; tests/test_metrics.py holds the two together.

What counts what:
- `runs{kind, phase}`: the runs this operator sees, now (a gauge kept from watch events).
- `reconcile_duration_seconds{kind}`: one reconcile of one run (timer or wake-up).
- `jobs_created_total{step}`, `jobs_failed_total{step}`: Jobs the operator created, and steps that
  failed (the Job failed, or its pods could not start).
- `step_duration_seconds{step}`: a step's Job from start to completion, when it succeeds.
- `rows_trained_total`, `rows_scored_total`: rows of succeeded TrainingRuns and EvaluationRuns.
- `heartbeats_missed_total{source}`: a shard's or trainer's heartbeat stopped while its pod ran.
- `generations_total{outcome}`, `promotions_total{result}`: for ContinualTraining (its
  reconciler increments them; `outcome` is succeeded/failed, `result` promoted/rejected).
"""
from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

PREFIX = "susy_operator"
METRICS_PORT_ENV = "SUSY_METRICS_PORT"
DEFAULT_METRICS_PORT = 8000

# Steps (a Job each) and sources of heartbeats: the only values those labels take.
STEPS = ("producer", "trainer", "evaluator")
SOURCES = ("shard", "trainer")
KINDS = ("TrainingRun", "EvaluationRun", "ContinualTraining")
GENERATION_OUTCOMES = ("succeeded", "failed")
PROMOTION_RESULTS = ("promoted", "rejected")

REGISTRY = CollectorRegistry()

# From 50 ms (a reconcile that only reads a Job) to a minute (a store that is slow to answer).
RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# A step runs from seconds (the sample) to hours (the seed's 52 million rows in one shard).
STEP_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200)

RUNS = Gauge(f"{PREFIX}_runs", "Runs this operator sees, by kind and phase", ["kind", "phase"], registry=REGISTRY)
RECONCILE_DURATION = Histogram(f"{PREFIX}_reconcile_duration_seconds", "Seconds one reconcile of one run took",
                               ["kind"], buckets=RECONCILE_BUCKETS, registry=REGISTRY)
JOBS_CREATED = Counter(f"{PREFIX}_jobs_created", "Jobs the operator created, by step", ["step"], registry=REGISTRY)
JOBS_FAILED = Counter(f"{PREFIX}_jobs_failed", "Steps whose Job failed (or whose pods could not start), by step",
                      ["step"], registry=REGISTRY)
STEP_DURATION = Histogram(f"{PREFIX}_step_duration_seconds", "Seconds from a step's Job start to its completion",
                          ["step"], buckets=STEP_BUCKETS, registry=REGISTRY)
ROWS_TRAINED = Counter(f"{PREFIX}_rows_trained", "Rows of succeeded TrainingRuns", registry=REGISTRY)
ROWS_SCORED = Counter(f"{PREFIX}_rows_scored", "Rows scored by succeeded EvaluationRuns", registry=REGISTRY)
HEARTBEATS_MISSED = Counter(f"{PREFIX}_heartbeats_missed",
                            "Heartbeats that stopped while their pod still ran, by source", ["source"],
                            registry=REGISTRY)
# For ContinualTraining's reconciler (issue 23): a generation ends succeeded or failed; a
# candidate model is promoted or rejected.
GENERATIONS = Counter(f"{PREFIX}_generations", "ContinualTraining generations finished, by outcome", ["outcome"],
                      registry=REGISTRY)
PROMOTIONS = Counter(f"{PREFIX}_promotions", "ContinualTraining candidate models, by result", ["result"],
                     registry=REGISTRY)

for _step in STEPS:  # every series exists from the start, at 0, so rate() and the dashboard see it
    JOBS_CREATED.labels(step=_step)
    JOBS_FAILED.labels(step=_step)
    STEP_DURATION.labels(step=_step)
for _kind in KINDS:
    RECONCILE_DURATION.labels(kind=_kind)
for _outcome in GENERATION_OUTCOMES:
    GENERATIONS.labels(outcome=_outcome)
for _result in PROMOTION_RESULTS:
    PROMOTIONS.labels(result=_result)
for _source in SOURCES:
    HEARTBEATS_MISSED.labels(source=_source)

# uid -> (kind, phase) of every run seen; `runs` is computed from it, so a run that changes phase
# or is deleted moves or leaves without any bookkeeping of counts.
_phases: dict[str, tuple[str, str]] = {}
_phases_lock = threading.Lock()
_server_lock = threading.Lock()
_server_port: int | None = None


def observe_run(uid: str, kind: str, phase: str | None, deleted: bool = False) -> None:
    """Record a run's current phase (from a watch event); `deleted` forgets it."""
    with _phases_lock:
        old = _phases.pop(uid, None) if deleted else _phases.get(uid)
        new = None if deleted else (kind, phase or "New")
        if new is not None:
            _phases[uid] = new
        if old == new:
            return
        if old is not None:
            RUNS.labels(*old).dec()
        if new is not None:
            RUNS.labels(*new).inc()


# What was counted for which run: the timer and a wake-up can both see a step end before either's
# status patch lands, and a retried handler sees it again; each (run, event) counts once. Bounded:
# the oldest entries go first (a run long finished is not seen again).
_COUNTED_LIMIT = 10_000
_counted: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()


def first_time(uid: str, event: str) -> bool:
    """Whether `event` (e.g. `failed:producer`) of run `uid` is seen for the first time here."""
    with _phases_lock:
        if (uid, event) in _counted:
            return False
        _counted[(uid, event)] = None
        while len(_counted) > _COUNTED_LIMIT:
            _counted.popitem(last=False)
        return True


def step_of(component: str) -> str:
    """The `step` label of a Job component (an unknown one would be an unbounded label: refused)."""
    if component not in STEPS:
        raise ValueError(f"unknown step {component!r}; known: {', '.join(STEPS)}")
    return component


def job_seconds(job: Mapping[str, Any] | None) -> float | None:
    """A finished Job's run time from its status (startTime -> completionTime)."""
    import datetime

    status = (job or {}).get("status") or {}
    start, end = status.get("startTime"), status.get("completionTime")
    if not start or not end:
        return None

    def parse(text: str) -> datetime.datetime:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))

    return max(0.0, (parse(end) - parse(start)).total_seconds())


def metrics_port(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    return int(env.get(METRICS_PORT_ENV, DEFAULT_METRICS_PORT))


def serve(port: int, addr: str = "0.0.0.0") -> int | None:
    """Start the /metrics server once (later calls return the port it has); 0: none."""
    global _server_port
    with _server_lock:
        if _server_port is None and port:
            try:
                start_http_server(port, addr=addr, registry=REGISTRY)
            except OSError as error:  # the runs matter more than their metrics: go on, loudly
                log.error("cannot serve Prometheus metrics on %s:%d: %s", addr, port, error)
                return None
            _server_port = port
            log.info("serving Prometheus metrics on %s:%d/metrics", addr, port)
        return _server_port


def exported_names() -> set[str]:
    """Every sample name the operator exports (with _total, _bucket, _sum, _count): the dashboard
    test checks each panel's query against these."""
    return {sample.name for family in REGISTRY.collect() for sample in family.samples} | {
        family.name for family in REGISTRY.collect()}
