"""Quota, pure: balances, allowances, spend caps, and the refusal ext_authz answers with."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from crosslogic.accounts import credits, plans
from crosslogic.billing import quota
from crosslogic.billing.quota import Account, Allowance, Grant, MonthUsage, Usage
from crosslogic.contracts.routing import Model
from crosslogic.errors import Invalid
from crosslogic.extauthz.decision import Allow, decide
from crosslogic.extauthz.responses import denied
from crosslogic.openai_errors import ApiError
from tests.support.key_records import key_record

NOW = datetime(2026, 3, 15, 12, tzinfo=UTC)
MARCH = datetime(2026, 3, 1, tzinfo=UTC)
FEB = datetime(2026, 2, 1, tzinfo=UTC)
D = Decimal


def account(**kw: object) -> Account:
    base = Account(mode=quota.PREPAID, allowance=quota.NO_ALLOWANCE, grants=(), months=())
    return replace(base, **kw)  # type: ignore[arg-type]


def test_month_start_is_the_utc_calendar_month() -> None:
    assert quota.month_start(NOW) == MARCH
    local = datetime(2026, 4, 1, 1, tzinfo=UTC).astimezone(timezone(timedelta(hours=5)))
    assert quota.month_start(local) == datetime(2026, 4, 1, tzinfo=UTC)


def test_effective_mode_prefers_the_tenant_then_stripe_then_the_plan() -> None:
    mode = quota.effective_mode
    assert mode(tenant_mode="prepaid", plan_mode="postpaid", stripe_customer=True) == "prepaid"
    assert mode(tenant_mode=None, plan_mode="prepaid", stripe_customer=True) == "postpaid"
    assert mode(tenant_mode=None, plan_mode="prepaid", stripe_customer=False) == "prepaid"
    assert mode(tenant_mode=None, plan_mode=None, stripe_customer=False) == "postpaid"


def test_chargeable_is_what_lies_beyond_the_allowance_exactly() -> None:
    usage = Usage(tokens=1000, cost=D("0.0004"))
    assert quota.chargeable(usage, quota.NO_ALLOWANCE) == D("0.0004")
    assert quota.chargeable(usage, Allowance(usd=D("0.0001"))) == D("0.0003")
    assert quota.chargeable(usage, Allowance(usd=D("1"))) == 0
    assert quota.chargeable(usage, Allowance(tokens=750)) == D("0.0001")
    assert quota.chargeable(usage, Allowance(tokens=1000)) == 0
    # a pro-rata share is rounded half-even to 10 places, never a float
    third = quota.chargeable(Usage(3, D("0.0000000001")), Allowance(tokens=2))
    assert third == D("0E-10") and isinstance(third, Decimal)


def test_balance_is_live_grants_minus_usage_since_the_oldest() -> None:
    grants = (Grant(D("10"), MARCH + timedelta(days=2)), Grant(D("5"), MARCH + timedelta(days=9)))
    months = (
        MonthUsage(MARCH, Usage(100, D("4")), before_since=Usage(10, D("1"))),
    )  # 1 USD was used before the first grant: not charged to it
    assert quota.balance(account(grants=grants, months=months), now=NOW) == D("12")


def test_expired_grants_count_for_nothing() -> None:
    expired = Grant(D("10"), FEB, expires_at=MARCH)
    live = Grant(D("3"), MARCH + timedelta(days=1), expires_at=NOW + timedelta(days=1))
    months = (MonthUsage(MARCH, Usage(10, D("2")), before_since=Usage(5, D("1"))),)
    assert quota.balance(account(grants=(expired, live), months=months), now=NOW) == D("2")
    assert quota.since((expired, live), now=NOW) == live.granted_at
    assert quota.balance(account(grants=(expired,)), now=NOW) == 0


def test_balance_spans_months_each_with_its_own_allowance() -> None:
    grants = (Grant(D("10"), FEB),)
    months = (MonthUsage(FEB, Usage(0, D("3"))), MonthUsage(MARCH, Usage(0, D("4"))))
    usd_allowance = account(grants=grants, months=months, allowance=Allowance(usd=D("1")))
    assert quota.balance(usd_allowance, now=NOW) == D("10") - D("2") - D("3")


def test_prepaid_is_refused_when_credits_are_used_up() -> None:
    months = (MonthUsage(MARCH, Usage(10, D("1"))),)
    assert quota.exhaustion(account(), now=NOW) == quota.CREDITS_EXHAUSTED
    funded = account(grants=(Grant(D("1.0000000001"), MARCH),), months=months)
    assert quota.exhaustion(funded, now=NOW) is None
    spent = account(grants=(Grant(D("1"), MARCH),), months=months)
    assert quota.exhaustion(spent, now=NOW) == quota.CREDITS_EXHAUSTED


def test_free_tier_is_refused_after_its_allowance_and_renewed_next_month() -> None:
    free = Allowance(tokens=100)
    used = account(allowance=free, months=(MonthUsage(MARCH, Usage(100, D("0.01"))),))
    assert quota.exhaustion(used, now=NOW) == quota.ALLOWANCE_USED
    assert (
        quota.exhaustion(replace(used, months=(MonthUsage(MARCH, Usage(99, D(1))),)), now=NOW)
        is None
    )
    next_month = datetime(2026, 4, 1, tzinfo=UTC)
    assert quota.exhaustion(used, now=next_month) is None
    # credits pay for what lies beyond the allowance
    topped = replace(used, grants=(Grant(D("1"), MARCH),))
    assert quota.exhaustion(topped, now=NOW) is None


def test_postpaid_is_refused_only_at_its_spend_cap() -> None:
    months = (MonthUsage(MARCH, Usage(10, D("5"))),)
    post = account(mode=quota.POSTPAID, months=months)
    assert quota.exhaustion(post, now=NOW) is None  # no credits needed
    assert quota.exhaustion(replace(post, spend_cap=D("5")), now=NOW) == quota.SPEND_CAP_REACHED
    assert quota.exhaustion(replace(post, spend_cap=D("5.01")), now=NOW) is None
    free_part = replace(post, spend_cap=D("5"), allowance=Allowance(usd=D("1")))
    assert quota.exhaustion(free_part, now=NOW) is None  # only 4 USD are chargeable
    last_month = replace(post, spend_cap=D("1"), months=(MonthUsage(FEB, Usage(1, D("9"))),))
    assert quota.exhaustion(last_month, now=NOW) is None


KEY = key_record()
CATALOG = {"m": Model(id=1, name="m")}
BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'


@pytest.mark.parametrize(
    "reason", [quota.CREDITS_EXHAUSTED, quota.ALLOWANCE_USED, quota.SPEND_CAP_REACHED]
)
def test_a_tenant_out_of_quota_gets_openais_quota_error(reason: str) -> None:
    key = replace(KEY, quota=reason)
    refused = decide(
        key=key, method="POST", path="/v1/chat/completions", body=BODY, catalog=CATALOG, now=NOW
    )
    assert isinstance(refused, ApiError)
    assert (refused.status, refused.type, refused.code) == (
        429,
        "insufficient_quota",
        "insufficient_quota",
    )
    assert refused.message == quota.MESSAGES[reason]
    response = denied(refused)
    headers = {h.header.key: h.header.value for h in response.denied_response.headers}
    assert headers["x-should-retry"] == "false"
    assert response.denied_response.status.code == 429
    # listing models costs nothing: still allowed; a well-formed request is otherwise allowed
    listing = decide(key=key, method="GET", path="/v1/models", body=b"", catalog=CATALOG, now=NOW)
    assert isinstance(listing, Allow)
    assert isinstance(
        decide(
            key=KEY, method="POST", path="/v1/chat/completions", body=BODY, catalog=CATALOG, now=NOW
        ),
        Allow,
    )


def test_other_429s_may_be_retried() -> None:
    error = ApiError(429, "slow down", "requests", "rate_limit_exceeded")
    headers = {h.header.key for h in denied(error).denied_response.headers}
    assert "x-should-retry" not in headers


def test_operator_input_is_refused_naming_the_field() -> None:
    now = NOW
    cases = [
        (lambda: credits.grant_spec({"amount_usd": 1.5}, now=now), "amount_usd"),
        (lambda: credits.grant_spec({"amount_usd": "0"}, now=now), "amount_usd"),
        (lambda: credits.grant_spec({}, now=now), "amount_usd"),
        (
            lambda: credits.grant_spec({"amount_usd": "1", "expires_at": "2026-01-01"}, now=now),
            "expires_at",
        ),
        (
            lambda: credits.grant_spec(
                {"amount_usd": "1", "expires_at": "2020-01-01T00:00:00Z"}, now=now
            ),
            "expires_at",
        ),
        (lambda: credits.grant_spec({"amount_usd": "1", "x": 1}, now=now), "x"),
        (lambda: plans.plan_spec({"monthly_allowance_tokens": -1}), "monthly_allowance_tokens"),
        (lambda: plans.plan_spec({"billing_mode": "monthly"}), "billing_mode"),
        (lambda: plans.plan_name("Bad Name"), "name"),
        (lambda: plans.billing_change({"monthly_spend_cap_usd": "abc"}), "monthly_spend_cap_usd"),
        (lambda: plans.billing_change({"plan": 3}), "plan"),
    ]
    for call, field in cases:
        with pytest.raises(Invalid) as caught:
            call()
        assert caught.value.param == field, caught.value.message
    grant = credits.grant_spec(
        {"amount_usd": "12.3456789012", "expires_at": "2027-01-01T00:00:00+02:00"}, now=now
    )
    assert grant.amount_usd == D("12.3456789012")
    assert grant.expires_at == datetime(2026, 12, 31, 22, tzinfo=UTC)
    assert plans.billing_change({"billing_mode": None}) == {"billing_mode": None}
