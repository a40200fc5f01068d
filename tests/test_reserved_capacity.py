"""Reserved capacity against the stack: each reserved hour's coverage computed with its
aggregates, the report's separate fee, overage and metered lines, Stripe getting the fee as
one invoice item and only the uncovered tokens as meter events, quota not counting covered
usage, and requests through Envoy drawing on a reservation.

Reservations that have already started are written with SQL: the API sells them ahead only.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import openai
import pytest

from crosslogic.billing import aggregation, quota_store
from crosslogic.billing.hours import HOUR
from crosslogic.billing.reconcile import CHECKS, Window, reconcile
from crosslogic.stack import Stack
from tests.support.admin import Admin, ok
from tests.support.db import connect_and, run_db
from tests.support.inference import client
from tests.support.stripe_double import INVOICE_ITEMS, StripeDouble, run_export, stripe_double
from tests.support.system import MODEL
from tests.support.usage import Payer, add_usage, payer, unused_hour
from tests.support.waiting import wait_until

D = Decimal
MINUTE = timedelta(minutes=1)
ROW = {"prompt": 25, "completion": 75, "cost": D("0.0001")}  # 100 tokens a row


@pytest.fixture()
def double() -> Any:
    with stripe_double() as d:
        yield d


def reserve(
    stack: Stack,
    who: Payer,
    starts_at: datetime,
    *,
    hours: int = 1,
    tokens_per_minute: int = 100,
    fee: str = "10.00",
    region: str | None = None,
) -> int:
    return int(
        run_db(
            stack,
            "INSERT INTO reservations (tenant_id, model_id, region_code, tokens_per_minute, "
            "starts_at, ends_at, fee_usd, actor) VALUES ($1, $2, $3, $4, $5, $6, $7, 'test') "
            "RETURNING id",
            who.tenant_id,
            who.model_id,
            region,
            tokens_per_minute,
            starts_at,
            starts_at + hours * HOUR,
            D(fee),
        )[0]["id"]
    )


def aggregate(stack: Stack, hour: datetime) -> None:
    connect_and(stack, lambda conn: aggregation.aggregate_hour(conn, hour))


def reserved_usage(stack: Stack, reservation: int) -> list[dict[str, Any]]:
    rows = run_db(stack, "SELECT * FROM reserved_usage WHERE reservation_id = $1", reservation)
    return [dict(r) for r in rows]


def one_hour_of_usage(stack: Stack, who: Payer, hour: datetime) -> None:
    """Minute 0: 100 tokens; minute 1: 300 tokens; minute 2: 100 tokens in another region."""
    add_usage(stack, who, hour, count=1, **ROW)  # type: ignore[arg-type]
    add_usage(stack, who, hour + MINUTE, count=3, **ROW)  # type: ignore[arg-type]
    add_usage(stack, who, hour + 2 * MINUTE, count=1, region="far-away", **ROW)  # type: ignore[arg-type]


def test_each_minute_is_covered_up_to_the_reservation_and_reruns_change_nothing(
    stack: Stack,
) -> None:
    who, hour = payer(stack), unused_hour()
    reservation = reserve(stack, who, hour, region="local")
    add_usage(stack, who, hour, count=1, region="local", **ROW)  # type: ignore[arg-type]
    add_usage(stack, who, hour + MINUTE, count=3, region="local", **ROW)  # type: ignore[arg-type]
    add_usage(stack, who, hour + 2 * MINUTE, count=1, **ROW)  # type: ignore[arg-type]  # no region
    aggregate(stack, hour)
    [row] = reserved_usage(stack, reservation)
    assert (row["used_prompt_tokens"], row["used_completion_tokens"]) == (100, 300)
    assert (row["covered_prompt_tokens"], row["covered_completion_tokens"]) == (50, 150)
    assert (row["used_cost_usd"], row["covered_cost_usd"]) == (D("0.0004"), D("0.0002"))
    assert row["minutes_over"] == 1
    aggregate(stack, hour)
    assert reserved_usage(stack, reservation) == [row]  # not even updated_at moved

    # a late row of minute 0 goes over there too; rows deleted, the reserved hour goes
    add_usage(stack, who, hour + timedelta(seconds=30), count=1, region="local", **ROW)  # type: ignore[arg-type]
    aggregate(stack, hour)
    [row] = reserved_usage(stack, reservation)
    assert row["covered_prompt_tokens"] + row["covered_completion_tokens"] == 200
    assert row["minutes_over"] == 2
    run_db(stack, "DELETE FROM usage_records WHERE tenant_id = $1", who.tenant_id)
    aggregate(stack, hour)
    assert reserved_usage(stack, reservation) == []


def test_the_report_shows_the_fee_the_overage_and_the_rest_as_separate_lines(
    stack: Stack, admin: Admin
) -> None:
    who, hour = payer(stack), unused_hour()
    reservation = reserve(stack, who, hour, fee="10.00")  # any region
    one_hour_of_usage(stack, who, hour)
    other_model = run_db(stack, "INSERT INTO models (name) VALUES ($1) RETURNING id", f"x{hour}")
    add_usage(
        stack,
        Payer(who.tenant_id, who.environment_id, who.api_key_id, who.key, other_model[0]["id"]),
        hour,
        count=1,
        **ROW,  # type: ignore[arg-type]
    )
    aggregate(stack, hour)
    start, end = hour.isoformat().replace("+00:00", "Z"), (hour + HOUR).isoformat()
    report = ok(admin("GET", f"/admin/usage/{who.tenant_id}?start={start}&end={end[:19]}Z"))
    assert report["total"]["total_tokens"] == 600 and D(report["total"]["cost_usd"]) == D("0.0006")
    fee, overage, metered = report["charges"]["lines"]
    assert fee == {
        "kind": "reservation_fee",
        "reservation_id": reservation,
        "model": MODEL,
        "region": None,
        "tokens_per_minute": 100,
        "period_start": hour.isoformat(),
        "period_end": (hour + HOUR).isoformat(),
        "amount_usd": "10.00",
    }
    # in scope: 500 tokens (minute 2's region too: the reservation is for any region)
    assert overage["kind"] == "reservation_overage" and overage["reservation_id"] == reservation
    assert (overage["covered_tokens"], overage["tokens"]) == (300, 200)
    assert D(overage["amount_usd"]) == D("0.0002")
    assert metered["kind"] == "metered" and metered["tokens"] == 100
    assert D(metered["amount_usd"]) == D("0.0001")
    assert D(report["charges"]["amount_due_usd"]) == D("10.0003")
    # a window after the period's start: no fee line, the overage of that window only
    after = f"start={(hour + HOUR).isoformat()[:19]}Z&end={(hour + 2 * HOUR).isoformat()[:19]}Z"
    later = ok(admin("GET", f"/admin/usage/{who.tenant_id}?{after}"))
    kinds = [line["kind"] for line in later["charges"]["lines"]]
    assert "reservation_fee" not in kinds


def test_stripe_gets_the_fee_once_as_an_invoice_item_and_only_uncovered_tokens(
    stack: Stack, double: StripeDouble
) -> None:
    who = payer(stack)
    cus = f"cus_res{datetime.now(UTC).timestamp()}"
    run_db(stack, "UPDATE tenants SET stripe_customer_id = $2 WHERE id = $1", who.tenant_id, cus)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - 3 * HOUR
    reservation = reserve(stack, who, hour, hours=2, fee="1500.25")
    one_hour_of_usage(stack, who, hour)
    aggregate(stack, hour)
    double.fail_next("500", path=INVOICE_ITEMS)  # the fee's first attempt
    first = run_export(stack, double)
    assert first is not None and first.failed >= 1
    later = datetime.now(UTC) + timedelta(hours=2)  # past the failed fee's retry delay
    assert run_export(stack, double, now=lambda: later) is not None
    [item] = double.invoice_items()
    assert item["customer"] == cus and item["amount"] == "150025" and item["currency"] == "usd"
    assert item["metadata[reservation_id]"] == str(reservation)
    assert item["period[start]"] == str(int(hour.timestamp()))
    assert "100 tokens/min" in item["description"]
    keys = [r.idempotency_key for r in double.requests if r.path == INVOICE_ITEMS]
    assert keys == [f"cl_res_{reservation}_fee"] * 2  # the retry is the same item to Stripe
    # 500 tokens used, 300 covered: 50 prompt + 150 completion go out
    sent: dict[str, int] = {}
    for form in double.events():
        if form["payload[stripe_customer_id]"] == cus:
            sent[form["event_name"]] = sent.get(form["event_name"], 0) + int(form["payload[value]"])
    assert sent == {"crosslogic_prompt_tokens": 50, "crosslogic_completion_tokens": 150}
    again = run_export(stack, double, now=lambda: later)
    assert again is not None and again.planned == 0 and again.sent == 0
    assert len(double.invoice_items()) == 1


def test_covered_usage_does_not_count_against_a_spend_cap(stack: Stack) -> None:
    who = payer(stack)
    run_db(
        stack,
        "UPDATE tenants SET billing_mode = 'postpaid', monthly_spend_cap_usd = 0.0003 "
        "WHERE id = $1",
        who.tenant_id,
    )
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    if datetime.now(UTC) - hour > timedelta(minutes=55):
        pytest.skip("too close to the hour's end for three minutes of usage in it")
    reserve(stack, who, hour)
    one_hour_of_usage(stack, who, hour)  # 0.0005 metered, 0.0003 of it covered

    async def state(conn: Any) -> dict[str, Any]:
        return await quota_store.state(conn, who.tenant_id)

    # before aggregation the covered part is not known: quota errs on refusing
    assert connect_and(stack, state)["refused_now"] == "spend_cap_reached"
    aggregate(stack, hour)
    after = connect_and(stack, state)
    assert D(after["month_cost_usd"]) == D("0.0002") and after["month_tokens"] == 200
    assert after["refused_now"] is None


def test_requests_through_envoy_draw_on_the_reservation(stack: Stack, admin: Admin) -> None:
    who = payer(stack)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    reservation = reserve(stack, who, hour, tokens_per_minute=1)
    ids = []
    for _ in range(3):
        reply = client(stack, who.key).chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hello there"}], max_tokens=4
        )
        ids.append(reply.headers["x-request-id"])
        assert isinstance(reply.parse(), openai.types.chat.ChatCompletion)

    def rows() -> list[Any]:
        found = run_db(stack, "SELECT * FROM usage_records WHERE request_id = ANY($1)", ids)
        return found if len(found) == 3 else []

    used = wait_until("the three usage rows", rows, timeout=15)
    hours = sorted({r["started_at"].replace(minute=0, second=0, microsecond=0) for r in used})
    for h in hours:
        aggregate(stack, h)
    total = sum(r["total_tokens"] for r in used)
    [row] = [r for r in reserved_usage(stack, reservation) if r["hour"] == hour] or [None]
    if row is None:  # the requests crossed into the next hour: outside the reservation
        pytest.skip("the requests ran past the reserved hour")
    covered = row["covered_prompt_tokens"] + row["covered_completion_tokens"]
    assert row["used_prompt_tokens"] + row["used_completion_tokens"] == total
    minutes = len({r["started_at"].replace(second=0, microsecond=0) for r in used})
    assert covered == minutes  # one token a minute
    report = ok(admin("GET", f"/admin/usage/{who.tenant_id}"))
    overage = next(x for x in report["charges"]["lines"] if x["kind"] == "reservation_overage")
    assert overage["covered_tokens"] == covered and overage["tokens"] == total - covered


def test_reconcile_recomputes_reserved_hours_and_follows_each_fee(
    stack: Stack, double: StripeDouble
) -> None:
    who = payer(stack)
    hour = unused_hour()
    while hour > datetime.now(UTC) - HOUR:  # a started reservation: its fee is due
        hour = unused_hour()
    window = Window(hour, hour + HOUR)
    reservation = reserve(stack, who, hour, fee="3.50")
    one_hour_of_usage(stack, who, hour)
    aggregate(stack, hour)

    def found(check: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        result = connect_and(
            stack, lambda conn: reconcile(conn, window, checks={check: CHECKS[check]})
        )
        return [d.as_dict() for d in result.differences], [d.as_dict() for d in result.pending]

    assert found("reserved_usage") == ([], [])
    run_db(
        stack,
        "UPDATE reserved_usage SET covered_cost_usd = 0 WHERE reservation_id = $1",
        reservation,
    )
    [wrong], _ = found("reserved_usage")
    assert wrong["reservation_id"] == reservation and wrong["field"] == "covered_cost_usd"
    assert D(wrong["expected"]) == D("0.0003") and D(wrong["found"]) == 0
    aggregate(stack, hour)  # a re-run writes what the rows say: the difference is gone
    assert found("reserved_usage") == ([], [])

    # a fee is followed once the tenant is billed through Stripe: pending until sent
    assert found("reservation_fees") == ([], [])
    run_db(
        stack,
        "UPDATE tenants SET stripe_customer_id = $2 WHERE id = $1",
        who.tenant_id,
        f"cus_rec{reservation}",
    )
    differences, [pending] = found("reservation_fees")
    assert differences == [] and pending["reason"] == "not_exported_yet"
    assert run_export(stack, double) is not None
    assert found("reservation_fees") == ([], [])
