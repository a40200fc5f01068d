"""Stripe export runs against the stack's PostgreSQL and a local Stripe double: what goes
out per hour, re-runs, deltas, failures and their retries, the lock, the command line, and
the tenant -> Stripe customer mapping (admin API and CLI). ``usage_hourly`` rows are written
directly: aggregation is not under test here."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from crosslogic.billing.exporter import ExportMetrics, ExportResult, StripeExporter
from crosslogic.billing.stripe_export import MeterNames
from crosslogic.billing.stripe_meter import StripeMeterEvents
from crosslogic.db.connection import connect, connect_kwargs
from crosslogic.stack import Stack
from tests.support.admin import Admin, ok
from tests.support.cli import Cli, cli_ok
from tests.support.db import run_db
from tests.support.logs import records
from tests.support.stripe_double import StripeDouble, run_export, stripe_double
from tests.support.tenants import fresh_tenant

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
H1, H2 = NOW - timedelta(hours=3), NOW - timedelta(hours=2)
PROMPT, COMPLETION = "crosslogic_prompt_tokens", "crosslogic_completion_tokens"


@pytest.fixture()
def double() -> Iterator[StripeDouble]:
    with stripe_double() as d:
        yield d


@pytest.fixture()
def stripe_cli(cli: Cli, double: StripeDouble, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_double")
    monkeypatch.setenv("STRIPE_API_BASE", double.url)
    return cli


def customer() -> str:
    return f"cus_t{time.monotonic_ns()}"


def model(stack: Stack) -> int:
    name = f"stripe-m-{time.monotonic_ns()}"
    return int(run_db(stack, "INSERT INTO models (name) VALUES ($1) RETURNING id", name)[0]["id"])


def usage(
    stack: Stack, tenant: str, env: str, model_id: int, hour: datetime, p: int, c: int
) -> None:
    run_db(
        stack,
        "INSERT INTO usage_hourly (hour, tenant_id, environment_id, model_id, request_count, "
        "prompt_tokens, completion_tokens, cost_usd) VALUES ($1, $2, $3, $4, 1, $5, $6, 0) "
        "ON CONFLICT (tenant_id, environment_id, model_id, region_code, hour) DO UPDATE "
        "SET prompt_tokens = $5, completion_tokens = $6",
        hour,
        tenant,
        env,
        model_id,
        p,
        c,
    )


def sent_to(double: StripeDouble, cus: str) -> dict[tuple[int, str], int]:
    """What Stripe holds for ``cus``: (timestamp, event name) -> summed value."""
    out: dict[tuple[int, str], int] = {}
    for form in double.events():
        if form["payload[stripe_customer_id]"] == cus:
            key = (int(form["timestamp"]), form["event_name"])
            out[key] = out.get(key, 0) + int(form["payload[value]"])
    return out


def requests_for(double: StripeDouble, cus: str) -> list[str]:
    return [
        r.form["identifier"]
        for r in double.requests
        if r.form.get("payload[stripe_customer_id]") == cus
    ]


def test_each_hours_total_goes_out_once_and_growth_as_a_delta(
    stack: Stack, double: StripeDouble, stripe_cli: Cli
) -> None:
    tenant, env1 = fresh_tenant(stack)
    env2 = run_db(
        stack,
        "INSERT INTO environments (tenant_id, name) VALUES ($1, 'dev') RETURNING id::text",
        tenant,
    )[0]["id"]
    other, other_env = fresh_tenant(stack)  # no Stripe customer: never exported
    m = model(stack)
    cus = customer()
    cli_ok(stripe_cli("billing", "customer", tenant, cus))
    usage(stack, tenant, env1, m, H1, 100, 10)
    usage(stack, tenant, env2, m, H1, 50, 5)
    usage(stack, tenant, env1, m, H2, 7, 0)
    usage(stack, other, other_env, m, H1, 1000, 1000)

    code, out, err = stripe_cli("billing", "export")
    assert code == 0, err
    assert json.loads(out)["failed"] == 0
    t1, t2 = int(H1.timestamp()), int(H2.timestamp())
    expected = {(t1, PROMPT): 150, (t1, COMPLETION): 15, (t2, PROMPT): 7}
    assert sent_to(double, cus) == expected
    rows = run_db(
        stack,
        "SELECT b.status, b.attempts, b.sequence, b.stripe_customer_id, b.stripe_event_id, "
        "b.idempotency_key, (SELECT count(*) FROM billing_event_attempts a "
        "WHERE a.event_id = b.id AND a.outcome = 'sent' AND a.http_status = 200) AS ok "
        "FROM billing_events b WHERE b.tenant_id = $1",
        tenant,
    )
    assert len(rows) == 3
    for r in rows:
        assert (r["status"], r["attempts"], r["sequence"], r["ok"]) == ("sent", 1, 0, 1)
        assert r["stripe_customer_id"] == cus and r["stripe_event_id"] == r["idempotency_key"]
    assert run_db(stack, "SELECT 1 FROM billing_events WHERE tenant_id = $1", other) == []

    code, out, _ = stripe_cli("billing", "export")  # a re-run changes nothing
    assert code == 0 and json.loads(out)["planned"] == 0
    assert len(requests_for(double, cus)) == 3

    usage(stack, tenant, env1, m, H1, 125, 10)  # late records: the hour grew by 25
    assert stripe_cli("billing", "export")[0] == 0
    assert sent_to(double, cus) == expected | {(t1, PROMPT): 175}
    delta = f"cl_{tenant}_{t1}_{m}_p1"
    assert requests_for(double, cus)[3:] == [delta]
    assert double.accepted[delta]["payload[value]"] == "25"


def test_the_billing_service_loop_exports_and_says_once_when_it_is_off(
    stack: Stack, double: StripeDouble
) -> None:
    logs = sorted(stack.supervisor.log_dir.glob("billing*.log"))  # type: ignore[union-attr]
    pids = [
        record["pid"]
        for log in logs
        for record in records(log)
        if "Stripe export is off" in record["message"]
    ]
    # once per process: other tests kill and restart billing
    assert pids and len(pids) == len(set(pids))

    tenant, env = fresh_tenant(stack)
    m = model(stack)
    cus = customer()
    run_db(stack, "UPDATE tenants SET stripe_customer_id = $2 WHERE id = $1", tenant, cus)
    usage(stack, tenant, env, m, H2, 11, 22)

    async def loop() -> None:
        pool = await asyncpg.create_pool(**connect_kwargs(stack.settings), min_size=1, max_size=2)
        events = StripeMeterEvents("sk_test", api_base=double.url, max_network_retries=0)
        exporter = StripeExporter(
            pool.acquire, events, ExportMetrics(CollectorRegistry()), names=MeterNames()
        )
        task = asyncio.create_task(exporter.run_forever(0.05))
        try:
            while len(sent_to(double, cus)) < 2:
                assert not task.done()
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await events.close()
            await pool.close()

    asyncio.run(asyncio.wait_for(loop(), timeout=30))
    t2 = int(H2.timestamp())
    assert sent_to(double, cus) == {(t2, PROMPT): 11, (t2, COMPLETION): 22}


def test_failed_events_wait_and_are_retried_under_the_same_identifier(
    stack: Stack, double: StripeDouble, stripe_cli: Cli
) -> None:
    tenant, env = fresh_tenant(stack)
    m = model(stack)
    cus = customer()
    cli_ok(stripe_cli("billing", "customer", tenant, cus))
    usage(stack, tenant, env, m, H1, 300, 30)
    double.fail_next("503", "reset", "503")  # the library's 2 retries fail as well

    code, out, _ = stripe_cli("billing", "export")
    assert code == 3  # some events failed: they wait for a retry
    assert json.loads(out)["stopped"] is True  # Stripe unreachable: the run stopped sending
    first = requests_for(double, cus)
    assert len(first) == 3 and len(set(first)) == 1
    assert {r.idempotency_key for r in double.requests} == set(first)
    [failed] = run_db(
        stack,
        "SELECT b.id, b.attempts, b.last_error, b.next_attempt_at, a.http_status "
        "FROM billing_events b JOIN billing_event_attempts a ON a.event_id = b.id "
        "WHERE b.tenant_id = $1 AND b.status = 'failed'",
        tenant,
    )
    assert failed["attempts"] == 1 and failed["http_status"] == 503 and failed["last_error"]
    assert failed["next_attempt_at"] > datetime.now(UTC)

    registry = CollectorRegistry()
    later = datetime.now(UTC) + timedelta(hours=1)
    result = run_export(stack, double, now=lambda: later, registry=registry)
    assert result is not None and result.failed == 0 and result.planned == 0
    assert result.oldest_unexported_hour is None
    assert requests_for(double, cus).count(first[0]) == 4  # the same event, sent again
    t1 = int(H1.timestamp())
    assert sent_to(double, cus) == {(t1, PROMPT): 300, (t1, COMPLETION): 30}
    attempts = run_db(
        stack,
        "SELECT attempt, outcome FROM billing_event_attempts WHERE event_id = $1 ORDER BY attempt",
        failed["id"],
    )
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "failed"), (2, "sent")]
    assert registry.get_sample_value("billing_usage_exported_total", {"meter": "prompt_tokens"})
    assert registry.get_sample_value("crosslogic_billing_oldest_unexported_hour_seconds") == 0


def test_a_second_export_skips_while_one_holds_the_lock(
    stack: Stack, double: StripeDouble, stripe_cli: Cli
) -> None:
    async def go() -> tuple[ExportResult | None, tuple[int, str, str]]:
        conn = await connect(stack.settings)
        try:
            assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", 0x434C5345)
            in_thread = await asyncio.to_thread(run_export, stack, double)
            code = await asyncio.to_thread(stripe_cli, "billing", "export")
            return in_thread, code
        finally:
            await conn.close()

    result, (code, _, err) = asyncio.run(go())
    assert result is None
    assert code == 75 and "another export is running" in err


def test_export_is_off_without_a_secret_key(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_SECRET_KEY", "")
    code, _, err = cli("billing", "export")
    assert code == 2 and "STRIPE_SECRET_KEY" in err


def test_a_tenants_stripe_customer_through_the_admin_api(stack: Stack, admin: Admin) -> None:
    tenant, _ = fresh_tenant(stack)
    other, _ = fresh_tenant(stack)
    path = f"/admin/tenants/{tenant}/stripe-customer"
    cus = customer()
    after = ok(admin("PUT", path, {"stripe_customer_id": cus}))
    assert (after["tenant_id"], after["stripe_customer_id"]) == (tenant, cus)
    assert ok(admin("GET", path))["stripe_customer_id"] == cus
    status, body = admin(
        "PUT", f"/admin/tenants/{other}/stripe-customer", {"stripe_customer_id": cus}
    )
    assert status == 409 and body["error"]["code"] == "stripe_customer_taken"
    for bad in ({}, {"stripe_customer_id": "acme"}, {"stripe_customer_id": cus, "plan": "x"}):
        status, body = admin("PUT", path, bad)
        assert status == 400 and body["error"]["param"] in ("stripe_customer_id", "plan"), body
    status, _ = admin(
        "PUT",
        "/admin/tenants/00000000-0000-0000-0000-000000000000/stripe-customer",
        {"stripe_customer_id": None},
    )
    assert status == 404
    assert ok(admin("PUT", path, {"stripe_customer_id": None}))["stripe_customer_id"] is None
    audit = ok(admin("GET", f"/admin/audit?entity_id={tenant}"))["data"]
    changes = [e for e in audit if e["action"] == "tenant.stripe_customer"]
    assert [e["after"]["stripe_customer_id"] for e in changes] == [None, cus]
    assert changes[0]["actor"] == "operator:alice"


def test_a_tenants_stripe_customer_from_the_command_line(stack: Stack, cli: Cli) -> None:
    tenant, _ = fresh_tenant(stack)
    cus = customer()
    assert cli_ok(cli("billing", "customer", tenant, cus))["stripe_customer_id"] == cus
    assert cli_ok(cli("billing", "customer", tenant, "--clear"))["stripe_customer_id"] is None
    code, _, err = cli("billing", "customer", tenant, "acme")
    assert code == 1 and "'stripe_customer_id'" in err
    code, _, err = cli("billing", "customer", tenant)
    assert code == 1 and "'stripe_customer_id' is required" in err
    code, _, err = cli("billing", "customer", tenant, cus, "--clear")
    assert code == 1 and "not both" in err
