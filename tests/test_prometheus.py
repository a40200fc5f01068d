"""The real Prometheus against the running system: every target (the control plane, each
Envoy's /stats/prometheus, each node) up, every alert rule loaded and evaluated; promtool
accepts the configuration and the rules, and the alerts' unit tests pass."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from crosslogic.stack import Stack
from tests.support.admin import Admin
from tests.support.prometheus import (
    CONFIG,
    DEPLOY,
    RULES,
    RULES_TEST,
    Prometheus,
    promtool,
    running_prometheus,
)
from tests.support.system import MODEL, outage
from tests.support.waiting import wait_until

# what the issue asks alerts for, each by the rule that covers it
REQUIRED_ALERTS = {
    "NodeDown",
    "NodesUnhealthy",
    "NoActiveNodes",
    "High5xxRate",
    "BillingExportFailures",
    "BillingExportBacklog",
    "AccessLogLag",
    "RedisDown",
    "PostgresDown",
    "XdsNacks",
}


@pytest.fixture(scope="module")
def prometheus(stack: Stack) -> Iterator[Prometheus]:
    with running_prometheus(stack) as running:
        yield running


def rule_groups() -> dict[str, list[str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {g["name"]: [r["alert"] for r in g["rules"]] for g in groups}


def live_nodes(stack: Stack) -> set[str]:
    """host:port of every node the registry says is live (heartbeating)."""
    nodes = Admin(stack)("GET", "/admin/nodes")[1]["nodes"]
    return {f"{n['address']}:{n['port']}" for n in nodes if n["live"]}


def test_every_target_is_up(prometheus: Prometheus, stack: Stack) -> None:
    control_plane = f"127.0.0.1:{stack.settings.prometheus_port}"
    envoys = {f"127.0.0.1:{g.settings.envoy_admin_port}" for g in stack.gateways}
    nodes = live_nodes(stack)
    assert len(nodes) >= stack.node_count

    def targets() -> dict[str, dict[str, Any]]:
        active = prometheus.api("targets?state=active")["activeTargets"]
        return {t["labels"]["instance"]: t for t in active}

    def all_up() -> dict[str, dict[str, Any]] | None:
        found = targets()
        # nodes other tests registered and left are targets too, down (NodeDown fires for
        # them, as it should); every live node, Envoy and the control plane must be up
        wanted = {control_plane, *envoys, *nodes}
        if not wanted <= found.keys():
            return None
        return found if all(found[t]["health"] == "up" for t in wanted) else None

    up = wait_until("every target up", all_up, timeout=60)
    assert up[control_plane]["labels"]["job"] == "control-plane"
    for envoy in envoys:
        assert up[envoy]["labels"]["job"] == "envoy"
        assert up[envoy]["scrapeUrl"].endswith("/stats/prometheus")
    for node in nodes:
        labels = up[node]["labels"]
        assert labels["job"] == "nodes" and labels["model"] == MODEL and labels["node_id"]
    assert {t["labels"]["job"] for t in up.values()} == {"control-plane", "envoy", "nodes"}


def test_every_rule_is_loaded_and_evaluates(prometheus: Prometheus) -> None:
    wanted = rule_groups()

    def evaluated() -> dict[str, dict[str, str]] | None:
        groups = prometheus.api("rules")["groups"]
        found = {g["name"]: {r["name"]: r["health"] for r in g["rules"]} for g in groups}
        every = [h for rules in found.values() for h in rules.values()]
        return found if every and set(every) == {"ok"} else None

    loaded = wait_until("every rule evaluated", evaluated, timeout=60)
    assert {name: sorted(rules) for name, rules in loaded.items()} == {
        name: sorted(alerts) for name, alerts in wanted.items()
    }


def test_the_series_the_alerts_need_are_scraped(prometheus: Prometheus) -> None:
    for name in (
        "crosslogic_dependency_up",
        "control_plane_active_nodes",
        "crosslogic_billing_access_log_lag_seconds",
        "crosslogic_billing_oldest_unexported_hour_seconds",
        "crosslogic_billing_export_failures_total",
        "crosslogic_xds_nacks_total",
        "envoy_server_live",
        "vllm:num_requests_running",
    ):
        wait_until(
            f"{name} in Prometheus",
            lambda n=name: prometheus.api(f"query?query={n}")["result"],  # type: ignore[misc]
            timeout=60,
        )


def test_an_outage_reaches_its_alert(prometheus: Prometheus, stack: Stack) -> None:
    """Redis killed: the admin process's check, the scrape and the rule see it (the alert is
    pending at once and would fire after its minute; the unit tests cover the rest)."""
    if stack.redis is None:
        pytest.skip("an external Redis cannot be killed from the tests")

    def alerted() -> set[str]:
        return {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]}

    assert "RedisDown" not in alerted()
    outage(stack, stack.redis)
    try:
        wait_until("RedisDown pending", lambda: "RedisDown" in alerted(), timeout=60)
    finally:
        stack.start_redis()
    wait_until("RedisDown resolved", lambda: "RedisDown" not in alerted(), timeout=60)


def test_the_required_alerts_exist() -> None:
    alerts = {a for group in rule_groups().values() for a in group}
    assert alerts >= REQUIRED_ALERTS


def test_promtool_accepts_the_config_and_rules(prometheus: Prometheus) -> None:
    for args in (
        ("check", "config", str(prometheus.config)),  # the rendered one, with the rules
        ("check", "config", "--syntax-only", str(CONFIG)),  # compose's (paths in the container)
        ("check", "rules", str(RULES)),
    ):
        checked = promtool(*args)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alert_unit_tests_pass() -> None:
    ran = promtool("test", "rules", RULES_TEST.name, cwd=DEPLOY)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "SUCCESS" in ran.stdout + ran.stderr


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load(Path(RULES_TEST).read_text())["tests"]
    tested = {t["alertname"] for case in tests for t in case.get("alert_rule_test", [])}
    fired = {
        t["alertname"]
        for case in tests
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    alerts = {a for group in rule_groups().values() for a in group}
    assert tested == alerts
    assert fired == alerts  # each one is seen firing, not only silent
