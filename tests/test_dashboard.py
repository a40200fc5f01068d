"""The Grafana dashboard (deploy/grafana): every query reads metrics the running system
really exports (the control plane's /metrics, each Envoy's /stats/prometheus, each node's
/metrics) and is accepted by the real Prometheus; the provisioning names the datasource the
panels use. The alert rules' metric names are checked the same way."""

from __future__ import annotations

import contextlib
import json
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from crosslogic.stack import Stack
from tests.support.dockerfile import REPO
from tests.support.inference import ask
from tests.support.metrics import (
    control_plane_metrics,
    exposition,
    node_metrics,
    sample_names,
)
from tests.support.prometheus import RULES, Prometheus, running_prometheus
from tests.support.promql import for_prometheus, metric_names
from tests.support.waiting import wait_until

GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "crosslogic.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "crosslogic.yml"
# series Prometheus makes itself for every target
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def queries() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def wanted() -> set[str]:
    """Every metric name the dashboard and the alert rules read."""
    exprs = queries() + [r["expr"] for r in alert_rules()]
    return set().union(*map(metric_names, exprs))


@pytest.fixture(scope="module")
def exported(stack: Stack) -> set[str]:
    """Every sample name the system exports once it has answered a request (the request
    series, and Envoy's per-status and histogram stats, appear then)."""
    assert stack.demo is not None
    assert ask(stack, stack.demo.api_key)

    def names() -> set[str]:
        texts = [control_plane_metrics(stack), *node_metrics(stack).values()]
        texts += [exposition(f"{g.admin_url}/stats/prometheus") for g in stack.gateways]
        return set().union(*map(sample_names, texts)) | SYNTHETIC

    # billing counts the request within a second; Envoy flushes histograms every 5 s
    with contextlib.suppress(TimeoutError):
        wait_until("every wanted metric exported", lambda: wanted() <= names(), timeout=30)
    return names()


@pytest.fixture(scope="module")
def prometheus(stack: Stack) -> Iterator[Prometheus]:
    with running_prometheus(stack) as running:
        yield running


def test_the_tokenizer_finds_metric_names() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, model) (rate(foo_bucket{a="b{c}", d=~"x|y"}'
        "[$__rate_interval]))) / on (model) group_left bar + vllm:kv_cache_usage_perc offset 5m"
        ' and topk(10, baz) or label_replace(qux, "a", "$1", "b", "(.*)") > 3 * 3600'
    )
    assert metric_names(expr) == {"foo_bucket", "bar", "vllm:kv_cache_usage_perc", "baz", "qux"}


def test_every_query_reads_metrics_the_system_exports(exported: set[str]) -> None:
    missing = {
        name: expr for expr in queries() for name in metric_names(expr) if name not in exported
    }
    assert not missing, f"not exported by the running system: {missing}"
    assert all(metric_names(expr) for expr in queries())


def test_the_variable_reads_an_exported_label(exported: set[str]) -> None:
    for variable in dashboard()["templating"]["list"]:
        match = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["query"]["query"])
        assert match, variable
        assert match.group(1) in exported


def test_every_alert_rule_reads_exported_metrics(exported: set[str]) -> None:
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names and names <= exported, (rule["alert"], names - exported)


def test_prometheus_accepts_every_query(prometheus: Prometheus) -> None:
    for expr in queries():
        prometheus.api("query?query=" + urllib.parse.quote(for_prometheus(expr)))


def test_the_panels_cover_the_issue() -> None:
    text = " ".join(queries())
    for needed in (
        "control_plane_requests_total",  # requests
        "control_plane_request_duration_seconds_bucket",  # latency, end to end
        "crosslogic_authz_check_seconds_bucket",  # latency by stage
        "envoy_cluster_upstream_rq_time_bucket",
        "control_plane_rate_limit_exceeded_total",  # 429s by layer
        "crosslogic_billing_tokens_total",  # tokens by model and tenant
        "crosslogic_billing_cost_usd_total",  # cost
        "control_plane_active_nodes",  # nodes by state
        "vllm:num_requests_running",  # and load
        "crosslogic_billing_access_log_lag_seconds",  # billing lag
    ):
        assert needed in text, needed
    assert "by (tenant)" in text and "by (layer, limit)" in text and "by (state)" in text


def test_provisioning_names_the_panels_datasource() -> None:
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus"
    uids = {p["datasource"]["uid"] for p in panels()}
    uids |= {t["datasource"]["uid"] for p in panels() for t in p["targets"]}
    assert uids == {source["uid"]}
    (provider,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
