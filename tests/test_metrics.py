"""The operator's metrics as the chart and the docs deliver them (issue 25).

- the chart renders a Service port for /metrics and the operator's env and container port to match;
  a ServiceMonitor only when asked for and the monitoring.coreos.com/v1 API is there (or forced);
- the Grafana dashboard ConfigMap carries the sidecar label, and every panel's query names only
  metrics the operator exports (metrics.exported_names, from the live registry), each query parses
  as PromQL (`promtool check rules`);
- the scrape config docs/operator.md gives passes `promtool check config`.
The real Prometheus scraping the real operator is in tests/test_operator_observe.py.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from susy_operator import metrics
from test_charts import OPERATOR, by_kind, helm, render  # noqa: F401 (helm: the fixture)

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = OPERATOR / "dashboards" / "susy-operator.json"
METRIC = re.compile(r"\b(susy_operator_[a-z_]+)\b")
PROMQL_FUNCTIONS_AND_WORDS = {"sum", "by", "rate", "increase", "histogram_quantile", "le"}

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool is not installed: apt-get install prometheus (.ci/run does)")


def panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def test_the_chart_serves_metrics_on_their_own_port_with_a_service(helm: str) -> None:
    objs = render(helm, OPERATOR)
    (service,) = [s for s in by_kind(objs, "Service") if s["metadata"]["name"].endswith("-metrics")]
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("metrics", 8000, "metrics")
    (deployment,) = by_kind(objs, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": 8000} in container["ports"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SUSY_METRICS_PORT"] == "8000" and env["SUSY_HEARTBEAT_STALE_SECONDS"] == "60"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    off = render(helm, OPERATOR, None, "metrics.enabled=false")
    assert not [s for s in by_kind(off, "Service") if s["metadata"]["name"].endswith("-metrics")]
    (deployment,) = by_kind(off, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in container["env"]}["SUSY_METRICS_PORT"] == "0"


def test_a_service_monitor_only_when_asked_and_the_api_exists_or_forced(helm: str) -> None:
    from test_charts import run_helm

    def monitors(*args: str) -> list[dict]:
        out = run_helm(helm, "template", "susy-operator", str(OPERATOR), "--namespace", "susy", *args)
        return [d for d in yaml.safe_load_all(out) if d and d.get("kind") == "ServiceMonitor"]

    api = ("--api-versions", "monitoring.coreos.com/v1")
    assert monitors() == [] and monitors(*api) == []  # off by default, even where the API exists
    assert monitors("--set", "metrics.serviceMonitor.enabled=true") == []  # no such API: not rendered
    (monitor,) = monitors("--set", "metrics.serviceMonitor.enabled=true", *api)
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["susy"]}
    forced = monitors("--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.serviceMonitor.force=true",
                      "--set", "metrics.serviceMonitor.labels.release=kube-prometheus-stack")
    assert len(forced) == 1 and forced[0]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = next(s for s in by_kind(render(helm, OPERATOR), "Service") if s["metadata"]["name"].endswith("-metrics"))
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())


def test_the_dashboard_configmap_has_the_sidecar_label_and_the_json(helm: str) -> None:
    (configmap,) = [c for c in by_kind(render(helm, OPERATOR), "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["susy-operator.json"]) == json.loads(DASHBOARD.read_text())
    off = render(helm, OPERATOR, None, "metrics.dashboard.enabled=false")
    assert not [c for c in by_kind(off, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]


def test_every_panel_queries_only_metrics_the_operator_exports() -> None:
    exported = metrics.exported_names()
    assert {"susy_operator_runs", "susy_operator_jobs_created_total",
            "susy_operator_step_duration_seconds_bucket"} <= exported
    used = set()
    for panel in panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(METRIC.findall(target["expr"]))
            assert names, f"{panel['title']}: {target['expr']} queries no operator metric"
            assert names <= exported, f"{panel['title']}: {sorted(names - exported)} not exported"
            used |= names
    # ... and the dashboard shows every family the operator exports.
    families = {f.name for f in metrics.REGISTRY.collect()}
    shown = {name for name in used for family in families if name == family or name.startswith(family + "_")}
    assert {f for f in families if not any(n == f or n.startswith(f + "_") for n in shown)} == set()


@needs_promtool
def test_every_panel_query_is_valid_promql(tmp_path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel{panel['id']}:{target['refId']}", "expr": target["expr"]}
        for panel in panels() for target in panel["targets"]]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(rules['groups'][0]['rules'])} rules found" in out.stdout


@needs_promtool
def test_the_documented_scrape_config_passes_promtool(helm: str, tmp_path) -> None:
    doc = (ROOT / "docs" / "operator.md").read_text()
    block = doc.split("<!-- scrape-config -->", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    config = yaml.safe_load(block)
    (target,) = config["scrape_configs"][0]["static_configs"][0]["targets"]
    # The Service the chart renders for the release the docs install (`susy-operator` in `susy`).
    assert target == "susy-operator-metrics.susy.svc:8000"
    from test_charts import NAMESPACE
    service = next(s for s in by_kind(render(helm, OPERATOR), "Service") if s["metadata"]["name"].endswith("-metrics"))
    assert target == f"{service['metadata']['name']}.{NAMESPACE}.svc:{service['spec']['ports'][0]['port']}"
    path = tmp_path / "prometheus.yml"
    path.write_text(block)
    out = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "SUCCESS" in out.stdout + out.stderr, out.stdout + out.stderr
