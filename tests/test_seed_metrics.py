"""The seed's metric names on the running system: requests and their duration by model,
endpoint and status (counted by billing from the access log), 429s by layer and limit, the
fleet by state, the Stripe export's counters, PostgreSQL and Redis up; and the control
plane's /metrics holds the control plane's processes only (each node serves its own)."""

from __future__ import annotations

import openai
import pytest

from crosslogic.billing.accesslog import Outcome
from crosslogic.billing.request_metrics import RequestMetrics, TenantLabels, endpoint
from crosslogic.stack import Stack
from tests.support.inference import ask, client
from tests.support.metrics import control_plane_metrics, node_metrics, total
from tests.support.system import MODEL, outage
from tests.support.tenants import demo_key
from tests.support.waiting import wait_until


def grows(stack: Stack, name: str, before: float, **labels: str) -> float:
    """Wait until ``name{labels}`` is above ``before`` (billing counts within a second)."""
    return wait_until(
        f"{name}{labels} above {before}",
        lambda: (v := total(control_plane_metrics(stack), name, **labels)) > before and v,
        timeout=30,
    )


def test_control_plane_metrics_hold_no_node_series(stack: Stack) -> None:
    text = control_plane_metrics(stack)
    assert "control_plane_active_nodes" in text
    assert "vllm:" not in text
    assert "crosslogic_node_" not in text
    nodes = node_metrics(stack)
    assert len(nodes) == 2
    for own in nodes.values():
        assert "vllm:num_requests_running" in own
        assert "control_plane_" not in own


def test_requests_are_counted_by_model_endpoint_and_status(stack: Stack) -> None:
    # Only requests ext_authz attributed to a key are in the access log (a flood of bad keys
    # must not grow billing's input): those it refused are crosslogic_authz_decisions_total,
    # and every request at the edge is Envoy's envoy_http_downstream_rq_xx.
    assert stack.demo is not None
    ok = {"model": MODEL, "endpoint": "chat/completions", "status": "200"}
    text = control_plane_metrics(stack)
    answered = total(text, "control_plane_requests_total", **ok)
    timed = total(text, "control_plane_request_duration_seconds_count", **ok)
    tokens = total(text, "crosslogic_billing_tokens_total", model=MODEL)

    assert ask(stack, stack.demo.api_key)
    grows(stack, "control_plane_requests_total", answered, **ok)
    grows(stack, "control_plane_request_duration_seconds_count", timed, **ok)
    grows(stack, "crosslogic_billing_tokens_total", tokens, model=MODEL)
    text = control_plane_metrics(stack)
    assert total(text, "control_plane_request_duration_seconds_bucket", le="+Inf", **ok) > 0


def test_a_refusal_is_counted_by_layer_and_limit(limited: Stack) -> None:
    """Wherever the limit is decided: the refused request reaches the access log too."""
    stack = limited
    key = demo_key(stack, rate_limit_rpm=1)
    name, labels = "control_plane_rate_limit_exceeded_total", {"layer": "key", "limit": "requests"}
    before = total(control_plane_metrics(stack), name, **labels)
    assert ask(stack, key.plaintext)
    with pytest.raises(openai.RateLimitError):
        ask(stack, key.plaintext)
    # counted within crosslogic.metrics.FLUSH_EVERY_S; exactly once
    assert grows(stack, name, before, **labels) == before + 1
    grows(
        stack,
        "control_plane_requests_total",
        0,
        model=MODEL,
        endpoint="chat/completions",
        status="429",
    )


def test_fleet_and_export_series_are_present(stack: Stack) -> None:
    def active() -> float:
        text = control_plane_metrics(stack)
        return total(text, "control_plane_active_nodes", model=MODEL, state="active")

    # the session's two nodes, and any other test's that still heartbeats
    wait_until("the fleet counted", lambda: active() >= 2)
    text = control_plane_metrics(stack)
    # the export is off in the tests (no STRIPE_SECRET_KEY): its series exist at 0
    for meter in ("prompt_tokens", "completion_tokens", "reservation_fee"):
        assert f'billing_usage_exported_total{{meter="{meter}"}}' in text
    assert 'crosslogic_billing_export_failures_total{reason="unreachable"}' in text


def test_dependency_up_follows_redis(stack: Stack) -> None:
    if stack.redis is None:
        pytest.skip("an external Redis cannot be killed from the tests")

    def up(name: str) -> float:
        return total(control_plane_metrics(stack), "crosslogic_dependency_up", dependency=name)

    wait_until("postgres and redis up", lambda: up("postgres") == 1 and up("redis") == 1)
    outage(stack, stack.redis)
    try:
        wait_until("redis down", lambda: up("redis") == 0, timeout=30)
        assert up("postgres") == 1
    finally:
        stack.start_redis()
    wait_until("redis up again", lambda: up("redis") == 1, timeout=30)
    assert stack.demo is not None
    assert client(stack, stack.demo.api_key).models.list().data


# -- the pure parts ------------------------------------------------------------------------


def test_tenant_labels_are_bounded() -> None:
    labels = TenantLabels(2)
    assert [labels(t) for t in ("a", "b", "c", "a", "d", "b")] == [
        "a",
        "b",
        "other",
        "a",
        "other",
        "b",
    ]
    assert TenantLabels(0)("a") == "other"


def test_endpoints_are_a_closed_set() -> None:
    assert endpoint("/v1/chat/completions") == "chat/completions"
    assert endpoint("/v1/embeddings") == "embeddings"
    assert endpoint("/v1/../../etc/passwd") == "other"
    assert endpoint("/anything") == "other"


def test_unattributed_requests_have_model_none() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    metrics = RequestMetrics(registry, tenants=1)
    metrics.answered([Outcome(model="", path="/v1/models?x=1", status=401, duration_ms=3)])
    text = generate_latest(registry).decode()
    assert total(text, "control_plane_requests_total", model="none", endpoint="other") == 1


def test_tokens_and_cost_are_summed_by_model_and_bounded_tenant() -> None:
    from datetime import UTC, datetime
    from decimal import Decimal

    from prometheus_client import CollectorRegistry, generate_latest

    from crosslogic.billing.accesslog import UsageRecord

    def row(request_id: str, tenant: str, prompt: int, completion: int) -> UsageRecord:
        return UsageRecord(
            request_id=request_id,
            tenant_id=tenant,
            environment_id="e",
            api_key_id="k",
            model_id=1,
            node_id="n",
            endpoint="/v1/chat/completions",
            streamed=False,
            prompt_tokens=prompt,
            completion_tokens=completion,
            status_code=200,
            response_flags="-",
            usage_estimated=False,
            started_at=datetime.now(UTC),
            duration_ms=5,
            model="m",
        )

    registry = CollectorRegistry()
    metrics = RequestMetrics(registry, tenants=1)
    rows = [row("r1", "t1", 3, 4), row("r2", "t1", 1, 1), row("r3", "t2", 10, 0)]
    metrics.billed(rows, {"r1": Decimal("0.5"), "r2": Decimal("0.25"), "r3": Decimal("1")})
    text = generate_latest(registry).decode()
    tokens = "crosslogic_billing_tokens_total"
    assert total(text, tokens, model="m", tenant="t1", kind="prompt") == 4
    assert total(text, tokens, model="m", tenant="t1", kind="completion") == 5
    assert total(text, tokens, model="m", tenant="other", kind="prompt") == 10
    assert total(text, "crosslogic_billing_cost_usd_total", tenant="t1") == 0.75
    assert total(text, "crosslogic_billing_cost_usd_total", tenant="other") == 1


def test_node_targets_are_http_sd_groups() -> None:
    from crosslogic.admin.node_targets import groups

    rows = [
        {"id": "n1", "address": "10.0.0.5", "port": 8000, "model": "m", "region": "eu"},
        {"id": "n2", "address": "fd00::7", "port": 8001, "model": "m", "region": None},
    ]
    assert groups(rows) == [
        {"targets": ["10.0.0.5:8000"], "labels": {"node_id": "n1", "model": "m", "region": "eu"}},
        {"targets": ["[fd00::7]:8001"], "labels": {"node_id": "n2", "model": "m", "region": ""}},
    ]
