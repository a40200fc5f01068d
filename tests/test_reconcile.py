"""Reconciliation's checks against the stack's PostgreSQL: a clean state passes, and each
kind of difference (exported events against aggregates, stored quota state against a
recompute, credit grants) is reported and named; pending ones are listed apart."""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from crosslogic.billing import aggregation, hours
from crosslogic.billing.reconcile import Difference, Window, reconcile
from crosslogic.billing.reconcile import credits as credit_checks
from crosslogic.billing.reconcile.export import exported_vs_hourly
from crosslogic.stack import Stack
from tests.support.cli import Cli, cli_ok
from tests.support.db import connect_and, run_db
from tests.support.usage import Payer, add_usage, payer

H = hours.HOUR


def future_hour() -> datetime:
    """A whole UTC hour within the export's reach (ahead of now) that no other test uses."""
    return hours.floor_hour(datetime.now(UTC)) + H * random.randrange(100, 50_000)


def past_hour() -> datetime:
    """A whole UTC hour older than the export's 34-day lookback."""
    return hours.floor_hour(datetime.now(UTC)) - H * random.randrange(24 * 40, 24 * 2000)


def stripe_payer(stack: Stack) -> Payer:
    who = payer(stack)
    run_db(stack, "UPDATE tenants SET stripe_customer_id = $2 WHERE id = $1",
           who.tenant_id, f"cus_{who.tenant_id[:8]}{random.randrange(10**9)}")  # fmt: skip
    return who


def usage_in(stack: Stack, who: Payer, hour: datetime, *, count: int) -> None:
    """``count`` rows of 10 prompt and 20 completion tokens, aggregated."""
    add_usage(stack, who, hour, count=count)
    connect_and(stack, lambda conn: aggregation.aggregate_hour(conn, hour))


def sent(stack: Stack, who: Payer, hour: datetime, meter: str, quantity: int, seq: int = 0) -> None:
    run_db(
        stack,
        "INSERT INTO billing_events (tenant_id, hour, model_id, meter, sequence, quantity,"
        " idempotency_key, status, event_name, stripe_customer_id, sent_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, 'sent', 'm', 'cus', now())",
        who.tenant_id, hour, who.model_id, meter, seq, quantity,
        f"test_{who.tenant_id}_{int(hour.timestamp())}_{meter}{seq}",
    )  # fmt: skip


EVERY_HOUR = Window()


def found_for(stack: Stack, tenant: str, window: Window = EVERY_HOUR) -> dict[str, list[Any]]:
    result = connect_and(stack, lambda conn: reconcile(conn, window))
    mine = [d for d in result.differences if d.subject.get("tenant_id") == tenant]
    pending = [d for d in result.pending if d.subject.get("tenant_id") == tenant]
    return {"differences": mine, "pending": pending}


def named(found: list[Difference]) -> list[tuple[str, str, str | None, str | None, str | None]]:
    return sorted((d.check, d.field, d.reason, d.expected, d.found) for d in found)


def test_exported_events_equal_to_the_aggregates_are_a_clean_state(stack: Stack, cli: Cli) -> None:
    who, hour = stripe_payer(stack), future_hour()
    usage_in(stack, who, hour, count=3)
    sent(stack, who, hour, "prompt_tokens", 20)
    sent(stack, who, hour, "prompt_tokens", 10, seq=1)  # the hour grew: the difference
    sent(stack, who, hour, "completion_tokens", 60)
    window = Window(hour, hour + H)
    assert found_for(stack, who.tenant_id, window) == {"differences": [], "pending": []}
    span = ["--since", hour.isoformat(), "--until", (hour + H).isoformat()]
    clean = cli_ok(cli("billing", "reconcile", *span))
    assert clean["differences"] == [] and clean["pending"] == []
    assert "stripe_export" in clean["checks"] and "quota" in clean["checks"]


def test_unexported_hours_are_pending_and_a_shrunk_or_expired_hour_is_a_difference(
    stack: Stack,
) -> None:
    who = stripe_payer(stack)
    waiting, shrunk, old = future_hour(), future_hour(), past_hour()
    for hour in (waiting, shrunk, old):
        usage_in(stack, who, hour, count=2)
    sent(stack, who, shrunk, "prompt_tokens", 25)  # 20 in the aggregate
    sent(stack, who, shrunk, "completion_tokens", 40)
    # a failed event is not in Stripe: its hour is still pending
    run_db(stack, "UPDATE billing_events SET status = 'failed' WHERE tenant_id = $1"
           " AND hour = $2 AND meter = 'completion_tokens'", who.tenant_id, shrunk)  # fmt: skip
    found = found_for(stack, who.tenant_id)
    assert named(found["differences"]) == [
        ("stripe_export", "completion_tokens", "past_lookback", "40", "0"),
        ("stripe_export", "prompt_tokens", "hour_shrank", "20", "25"),
        ("stripe_export", "prompt_tokens", "past_lookback", "20", "0"),
    ]
    assert named(found["pending"]) == [
        ("stripe_export", "completion_tokens", "not_exported_yet", "40", "0"),
        ("stripe_export", "completion_tokens", "not_exported_yet", "40", "0"),
        ("stripe_export", "prompt_tokens", "not_exported_yet", "20", "0"),
    ]
    shrank = next(d for d in found["differences"] if d.reason == "hour_shrank")
    assert shrank.as_dict()["hour"] == shrunk.isoformat()
    # a tenant without a Stripe customer is not exported, so not checked
    plain = payer(stack)
    usage_in(stack, plain, waiting, count=1)
    assert found_for(stack, plain.tenant_id) == {"differences": [], "pending": []}


def test_cli_exits_1_naming_an_export_difference(stack: Stack, cli: Cli) -> None:
    who, hour = stripe_payer(stack), future_hour()
    usage_in(stack, who, hour, count=1)
    sent(stack, who, hour, "prompt_tokens", 10)
    sent(stack, who, hour, "completion_tokens", 21)  # one token more than used
    span = ["--since", hour.isoformat(), "--until", (hour + H).isoformat()]
    code, out, _ = cli("billing", "reconcile", *span)
    assert code == 1
    (difference,) = json.loads(out)["differences"]
    assert difference["check"] == "stripe_export" and difference["reason"] == "hour_shrank"
    assert (difference["field"], difference["expected"], difference["found"]) == (
        "completion_tokens", "20", "21",
    )  # fmt: skip
    run_db(stack, "DELETE FROM billing_events WHERE tenant_id = $1", who.tenant_id)
    code, out, _ = cli("billing", "reconcile", *span)  # nothing sent: pending, exit 0
    assert code == 0 and len(json.loads(out)["pending"]) == 2


Work = Callable[[asyncpg.Connection], Awaitable[Any]]


def rolled_back(stack: Stack, work: Work) -> Any:
    """``work`` in a transaction that is rolled back: billing's quota loop never sees it."""

    async def go(conn: asyncpg.Connection) -> Any:
        txn = conn.transaction()
        await txn.start()
        try:
            return await work(conn)
        finally:
            await txn.rollback()

    return connect_and(stack, go)


async def refuse(conn: asyncpg.Connection, tenant: str, reason: str) -> None:
    await conn.execute(
        "UPDATE tenants SET quota_reason = $2, quota_exhausted_at = now() WHERE id = $1",
        tenant,
        reason,
    )


def test_a_stored_quota_state_is_a_difference_unless_a_recompute_is_due(stack: Stack) -> None:
    stale, busy, right, postpaid = (payer(stack) for _ in range(4))

    async def work(conn: asyncpg.Connection) -> list[Difference]:
        # prepaid without credits: refused (credits_exhausted), but stored as allowed
        for who in (stale, busy, right):
            await conn.execute("UPDATE tenants SET billing_mode = 'prepaid' WHERE id = $1",
                               who.tenant_id)  # fmt: skip
        await refuse(conn, right.tenant_id, "credits_exhausted")
        # a refusal stored for a postpaid tenant without a cap is stale too
        await refuse(conn, postpaid.tenant_id, "spend_cap_reached")
        # a usage row just recorded: billing recomputes within a second
        await conn.execute(
            "INSERT INTO usage_records (request_id, tenant_id, environment_id, api_key_id,"
            " model_id, endpoint, prompt_tokens, completion_tokens, cost_usd, status_code,"
            " started_at, duration_ms) VALUES (gen_random_uuid()::text, $1, $2, $3, $4,"
            " '/v1/completions', 1, 1, 0.01, 200, now(), 1)",
            busy.tenant_id, busy.environment_id, busy.api_key_id, busy.model_id,
        )  # fmt: skip
        return await credit_checks.quota_state(conn, Window())

    found = rolled_back(stack, work)
    mine = {d.subject["tenant_id"]: d for d in found}
    assert right.tenant_id not in mine
    assert (mine[stale.tenant_id].reason, mine[stale.tenant_id].pending) == ("stale", False)
    assert (mine[stale.tenant_id].expected, mine[stale.tenant_id].found) == (
        "credits_exhausted", "ok",
    )  # fmt: skip
    assert (mine[postpaid.tenant_id].expected, mine[postpaid.tenant_id].found) == (
        "ok", "spend_cap_reached",
    )  # fmt: skip
    assert (mine[busy.tenant_id].reason, mine[busy.tenant_id].pending) == (
        "recompute_pending", True,
    )  # fmt: skip


def test_a_null_or_negative_credit_grant_is_a_difference(stack: Stack) -> None:
    """The schema refuses both: the constraints are dropped inside a rolled-back
    transaction, as a damaged database would have them."""
    who = payer(stack)

    async def work(conn: asyncpg.Connection) -> tuple[list[Difference], list[Difference]]:
        for name in await conn.fetch(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'credit_grants'::regclass"
            " AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%amount_usd%'"
        ):
            await conn.execute(f'ALTER TABLE credit_grants DROP CONSTRAINT "{name[0]}"')
        await conn.execute("ALTER TABLE credit_grants ALTER COLUMN amount_usd DROP NOT NULL")
        await conn.execute("UPDATE tenants SET billing_mode = 'prepaid' WHERE id = $1",
                           who.tenant_id)  # fmt: skip
        for amount in ("-5", None, "3"):
            await conn.execute(
                "INSERT INTO credit_grants (tenant_id, amount_usd, actor)"
                " VALUES ($1, $2::numeric, 'test')", who.tenant_id, amount,
            )  # fmt: skip
        grants = await credit_checks.credit_grants(conn, Window())
        # its quota is not recomputed from a broken ledger (no crash, no quota line)
        return grants, await credit_checks.quota_state(conn, Window())

    grants, quota_found = rolled_back(stack, work)
    mine = [d for d in grants if d.subject["tenant_id"] == who.tenant_id]
    assert named(mine) == [
        ("credit_grants", "amount_usd", "negative_amount", ">= 0", "-5.0000000000"),
        ("credit_grants", "amount_usd", "null_amount", ">= 0", "NULL"),
    ]
    assert who.tenant_id not in [d.subject["tenant_id"] for d in quota_found]
    assert run_db(stack, "SELECT count(*) AS n FROM credit_grants WHERE tenant_id = $1",
                  who.tenant_id)[0]["n"] == 0  # fmt: skip


def test_the_export_check_alone_runs_in_a_plain_transaction(stack: Stack) -> None:
    """A check is a plain function of the connection and the window."""
    who, hour = stripe_payer(stack), future_hour()
    usage_in(stack, who, hour, count=1)
    found = connect_and(stack, lambda conn: exported_vs_hourly(conn, Window(hour, hour + H)))
    assert {(d.field, d.pending) for d in found} == {
        ("prompt_tokens", True), ("completion_tokens", True),
    }  # fmt: skip
