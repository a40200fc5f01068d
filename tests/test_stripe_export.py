"""The Stripe export's decisions (pure) and its adapter: the real ``stripe`` library against
a local double of the meter events endpoint, asserting on what it really sends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from crosslogic.billing.stripe_export import (
    HourTotal,
    MeterNames,
    identifier,
    payload,
    plan,
    retry_delay,
)
from crosslogic.billing.stripe_meter import Answer, MeterEvent, StripeMeterEvents
from tests.support.stripe_double import PATH, StripeDouble, stripe_double

HOUR = datetime(2026, 11, 29, 13, tzinfo=UTC)
TENANT = "9b2f7c52-1d4e-4b8a-9e3f-0a1b2c3d4e5f"
NAMES = MeterNames()


def total(
    prompt: int, completion: int, *, exported: tuple[int, int] = (0, 0), seq: int = 0
) -> HourTotal:
    return HourTotal(
        tenant_id=TENANT,
        stripe_customer_id="cus_A1",
        hour=HOUR,
        model_id=7,
        model="llama",
        tokens={"prompt_tokens": prompt, "completion_tokens": completion},
        exported={"prompt_tokens": exported[0], "completion_tokens": exported[1]},
        next_sequence={"prompt_tokens": seq, "completion_tokens": seq},
    )


def test_a_first_export_sends_each_meter_total_as_sequence_zero() -> None:
    events, over = plan([total(100, 40)], NAMES)
    assert over == []
    assert [(e.meter, e.sequence, e.quantity, e.event_name) for e in events] == [
        ("prompt_tokens", 0, 100, "crosslogic_prompt_tokens"),
        ("completion_tokens", 0, 40, "crosslogic_completion_tokens"),
    ]
    assert events[0].identifier == f"cl_{TENANT}_{int(HOUR.timestamp())}_7_p0"
    assert events[1].identifier == f"cl_{TENANT}_{int(HOUR.timestamp())}_7_c0"


def test_an_hour_that_grew_sends_only_the_difference_as_the_next_sequence() -> None:
    events, _ = plan([total(130, 40, exported=(100, 40), seq=1)], NAMES)
    assert [(e.meter, e.sequence, e.quantity) for e in events] == [("prompt_tokens", 1, 30)]
    assert events[0].identifier.endswith("_7_p1")


def test_an_exported_hour_plans_nothing_and_a_shrunk_one_is_reported() -> None:
    assert plan([total(100, 40, exported=(100, 40), seq=1)], NAMES) == ([], [])
    events, over = plan([total(90, 40, exported=(100, 40), seq=1)], NAMES)
    assert events == []
    assert [(o.meter, o.exported, o.total) for o in over] == [("prompt_tokens", 100, 90)]


def test_identifiers_are_deterministic_distinct_and_within_stripes_limit() -> None:
    seen = {
        identifier(
            tenant_id=TENANT, hour=HOUR + timedelta(hours=h), model_id=m, meter=meter, sequence=s
        )
        for h in range(3)
        for m in (1, 2_000_000_000)
        for meter in ("prompt_tokens", "completion_tokens")
        for s in (0, 1, 999_999)
    }
    assert len(seen) == 3 * 2 * 2 * 3
    assert max(len(i) for i in seen) <= 100
    assert identifier(
        tenant_id=TENANT, hour=HOUR, model_id=1, meter="prompt_tokens", sequence=0
    ) == identifier(tenant_id=TENANT, hour=HOUR, model_id=1, meter="prompt_tokens", sequence=0)


def test_retry_delay_doubles_up_to_an_hour() -> None:
    delays = [retry_delay(n).total_seconds() for n in (1, 2, 3, 8, 100)]
    assert delays == [30, 60, 120, 3600, 3600]


@pytest.fixture()
def double() -> Iterator[StripeDouble]:
    with stripe_double() as d:
        yield d


EVENT = MeterEvent(
    event_name="crosslogic_prompt_tokens",
    identifier=f"cl_{TENANT}_{int(HOUR.timestamp())}_7_p0",
    timestamp=HOUR,
    payload=payload(stripe_customer_id="cus_A1", quantity=1234, model="llama"),
)


def send(double: StripeDouble, *, retries: int = 2) -> Answer:
    async def go() -> Answer:
        events = StripeMeterEvents(
            "sk_test_double", api_base=double.url, max_network_retries=retries, timeout=5
        )
        try:
            return await events.send(EVENT)
        finally:
            await events.close()

    return asyncio.run(go())


def test_the_library_sends_the_meter_event_with_its_identifier_as_idempotency_key(
    double: StripeDouble,
) -> None:
    answer = send(double)
    assert answer.sent and answer.http_status == 200
    assert answer.response is not None and answer.response["identifier"] == EVENT.identifier
    [request] = double.requests
    assert (request.method, request.path) == ("POST", PATH)
    assert request.headers["authorization"] == "Bearer sk_test_double"
    assert request.idempotency_key == EVENT.identifier
    assert request.form == {
        "event_name": "crosslogic_prompt_tokens",
        "identifier": EVENT.identifier,
        "timestamp": str(int(HOUR.timestamp())),
        "payload[stripe_customer_id]": "cus_A1",
        "payload[value]": "1234",
        "payload[model]": "llama",
    }


@pytest.mark.parametrize("failure", ["500", "503", "reset"])
def test_failures_are_retried_with_the_same_idempotency_key(
    double: StripeDouble, failure: str
) -> None:
    double.fail_next(failure, failure)
    answer = send(double)
    assert answer.sent
    assert len(double.requests) == 3
    assert {r.idempotency_key for r in double.requests} == {EVENT.identifier}
    assert {r.form["identifier"] for r in double.requests} == {EVENT.identifier}
    assert len(double.events()) == 1


def test_stripe_still_failing_after_the_retries_is_unreachable(double: StripeDouble) -> None:
    double.fail_next("503", "reset")
    answer = send(double, retries=1)
    assert not answer.sent and answer.unreachable
    assert len(double.requests) == 2 and double.events() == []


def test_a_refusal_is_not_retried_and_keeps_stripes_answer(double: StripeDouble) -> None:
    double.fail_next("400")
    answer = send(double)
    assert not answer.sent and not answer.unreachable
    assert answer.http_status == 400
    assert answer.response == {"error": {"type": "invalid_request_error", "message": "double: 400"}}
    assert answer.error is not None and "double: 400" in answer.error
    assert len(double.requests) == 1


def test_nothing_listening_is_unreachable() -> None:
    with stripe_double() as gone:
        url = gone.url
    answer = send(StripeDouble(url=url), retries=0)
    assert not answer.sent and answer.unreachable and answer.http_status is None
