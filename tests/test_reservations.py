"""Reserved capacity, pure: the coverage rule and what a reservation to create must say."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crosslogic.billing.reservations import (
    Coverage,
    MinuteUsage,
    cover_hour,
    cover_minute,
    reservation_spec,
)
from crosslogic.errors import Invalid

NOW = datetime(2026, 11, 29, 22, 30, tzinfo=UTC)
D = Decimal
BODY: dict[str, Any] = {
    "model": "m",
    "tokens_per_minute": 1000,
    "starts_at": "2026-12-01T00:00:00Z",
    "ends_at": "2027-01-01T00:00:00Z",
    "fee_usd": "1500.00",
}


def test_a_minute_within_the_reservation_is_covered_whole() -> None:
    c = cover_minute(MinuteUsage(300, 700, D("0.0123")), 1000)
    assert (c.covered_prompt_tokens, c.covered_completion_tokens, c.covered_cost) == (
        300,
        700,
        D("0.0123"),
    )
    assert c.minutes_over == 0


def test_a_minute_over_the_reservation_is_covered_in_proportion() -> None:
    # 4000 tokens, 1000 reserved: a quarter of each, the cost's quarter
    c = cover_minute(MinuteUsage(1000, 3000, D("0.04")), 1000)
    assert (c.covered_prompt_tokens, c.covered_completion_tokens) == (250, 750)
    assert c.covered_cost == D("0.01")
    assert c.minutes_over == 1
    # the prompt share rounds half-even; completion takes the rest
    c = cover_minute(MinuteUsage(1, 2, D("0.0000000003")), 2)
    assert (c.covered_prompt_tokens, c.covered_completion_tokens) == (1, 1)
    assert c.covered_cost == D("0.0000000002")


def test_an_hour_sums_its_minutes() -> None:
    hour = cover_hour([MinuteUsage(500, 500, D(1)), MinuteUsage(1000, 1000, D(2))], 1000)
    assert hour == Coverage(1500, 1500, D(3), 1000, 1000, D(2), minutes_over=1)


@given(
    st.integers(0, 10**9),
    st.integers(0, 10**9),
    st.decimals(min_value=0, max_value=10**6, places=10),
    st.integers(1, 10**9),
)
def test_coverage_never_exceeds_the_usage_or_the_reservation(
    prompt: int, completion: int, cost: Decimal, tpm: int
) -> None:
    c = cover_minute(MinuteUsage(prompt, completion, cost), tpm)
    covered = c.covered_prompt_tokens + c.covered_completion_tokens
    assert covered == min(prompt + completion, tpm)
    assert 0 <= c.covered_prompt_tokens <= prompt
    assert 0 <= c.covered_completion_tokens <= completion
    assert 0 <= c.covered_cost <= cost


def test_a_reservation_spec_reads_every_field() -> None:
    spec = reservation_spec({**BODY, "region": "local", "note": "Q4"}, now=NOW)
    assert spec.model == "m" and spec.region == "local" and spec.tokens_per_minute == 1000
    assert spec.starts_at == datetime(2026, 12, 1, tzinfo=UTC)
    assert spec.fee_usd == D("1500.00") and spec.note == "Q4"
    assert reservation_spec({**BODY, "fee_usd": 0}, now=NOW).fee_usd == 0
    assert reservation_spec(BODY, now=NOW).region is None


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": None}, "model"),
        ({"region": ""}, "region"),
        ({"tokens_per_minute": 0}, "tokens_per_minute"),
        ({"tokens_per_minute": 1.5}, "tokens_per_minute"),
        ({"tokens_per_minute": True}, "tokens_per_minute"),
        ({"starts_at": "2026-12-01T00:30:00Z"}, "starts_at"),
        ({"starts_at": "soon"}, "starts_at"),
        ({"ends_at": "2026-12-01T00:00:00Z"}, "ends_at"),
        ({"starts_at": "2026-11-01T00:00:00Z", "ends_at": "2026-11-02T00:00:00Z"}, "ends_at"),
        ({"fee_usd": "10.001"}, "fee_usd"),
        ({"fee_usd": -1}, "fee_usd"),
        ({"fee_usd": 1.5}, "fee_usd"),
        ({"note": "x" * 501}, "note"),
        ({"gpus": 2}, "gpus"),
    ],
)
def test_a_bad_reservation_names_its_field(change: dict[str, Any], param: str) -> None:
    with pytest.raises(Invalid) as caught:
        reservation_spec({**BODY, **change}, now=NOW)
    assert caught.value.param == param


@pytest.mark.parametrize(
    "missing", ["model", "tokens_per_minute", "starts_at", "ends_at", "fee_usd"]
)
def test_a_reservation_without_a_required_field_names_it(missing: str) -> None:
    body = {k: v for k, v in BODY.items() if k != missing}
    with pytest.raises(Invalid, match="required") as caught:
        reservation_spec(body, now=NOW)
    assert caught.value.param == missing
