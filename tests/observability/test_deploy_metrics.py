"""The Grafana dashboard and the Prometheus-based autoscalers in deploy/ name only metrics
that GET /metrics really serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.support import Stack

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
USERS = [
    DEPLOY / "grafana" / "launchbay-dashboard.json",
    DEPLOY / "k8s" / "alternatives" / "keda-prometheus.yaml",
    DEPLOY / "k8s" / "alternatives" / "prometheus-adapter.yaml",
]
_NAME = re.compile(r"\blaunchbay_[a-z_]+\b")


def served(stack: Stack) -> set[str]:
    """Every sample name /metrics can give: counters' _total, histograms' three series."""
    text = stack.http.get("/metrics").text
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {
                "counter": {name if name.endswith("_total") else f"{name}_total"},
                "histogram": {f"{name}_bucket", f"{name}_sum", f"{name}_count"},
            }.get(kind, {name})
    return names


def test_deploy_names_only_served_metrics(obs_stack: Stack) -> None:
    have = served(obs_stack)
    assert "launchbay_jobs_ended_total" in have and "launchbay_event_lag_seconds_bucket" in have
    used: set[str] = set()
    for path in USERS:
        used |= set(_NAME.findall(path.read_text()))
    # (launchbay_jobs_demand is the adapter's name for the HPA, not a scraped series)
    unknown = sorted(used - have - {"launchbay_jobs_demand"})
    assert unknown == [], f"deploy/ uses metrics /metrics does not serve: {unknown}"
    dash = json.loads(USERS[0].read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 10 and all(_NAME.search(e) for e in exprs)


def test_the_prometheus_autoscalers_ask_for_the_worker_executors() -> None:
    config = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())["data"]
    want = "|".join(config["LAUNCHBAY_WORKER_EXECUTORS"].split(","))
    so = yaml.safe_load(USERS[1].read_text())
    (trigger,) = so["spec"]["triggers"]
    assert f'executor=~"{want}"' in trigger["metadata"]["query"]
    assert trigger["metadata"]["threshold"] == config["LAUNCHBAY_WORKER_CONCURRENCY"]
    rules = yaml.safe_load(yaml.safe_load(USERS[2].read_text())["data"]["config.yaml"])
    (rule,) = rules["externalRules"]
    assert rule["name"]["as"] == "launchbay_jobs_demand"
    assert f'executor=~"{want}"' in rule["metricsQuery"]
