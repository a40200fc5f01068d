"""Quota at the gateway, through Envoy with the openai SDK: prepaid tenants out of credits,
free-tier tenants past their allowance and postpaid tenants at their spend cap are refused
with OpenAI's ``insufficient_quota`` within seconds, and served again once an operator acts.
Also the admin API and the command line of plans and credits, with their validation."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import pytest
from prometheus_client import CollectorRegistry

from crosslogic.billing.quota_store import QuotaKeeper
from crosslogic.db.connection import create_pool
from crosslogic.metrics import FLUSH_EVERY_S
from crosslogic.stack import Stack
from tests.support.admin import Admin, ok
from tests.support.cli import Cli, cli_ok
from tests.support.db import run_db
from tests.support.metrics import metric
from tests.support.protocols import over_both_protocols
from tests.support.system import MODEL
from tests.support.tenants import CreatedKey, fresh_tenant, key_in
from tests.support.waiting import wait_until

stack = over_both_protocols()  # every test here runs over gRPC, then HTTP

REFUSED = 'crosslogic_authz_decisions_total{outcome="insufficient_quota"}'


def customer(stack: Stack) -> tuple[str, CreatedKey]:
    tenant, env = fresh_tenant(stack)
    return tenant, key_in(stack, tenant, env)


def ask(stack: Stack, key: CreatedKey, *, retries: int = 2) -> Any:
    """One chat request with the SDK's default retries: it must not retry a quota error."""
    client = openai.OpenAI(base_url=stack.base_url, api_key=key.plaintext, max_retries=retries)
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=4
    )


def refusal(stack: Stack, key: CreatedKey) -> openai.RateLimitError | None:
    try:
        ask(stack, key, retries=0)
    except openai.RateLimitError as exc:
        return exc
    return None


def served(stack: Stack, key: CreatedKey) -> bool:
    return refusal(stack, key) is None


def test_prepaid_tenant_at_zero_balance_is_refused_and_a_grant_restores_it(
    stack: Stack, admin: Admin
) -> None:
    tenant, key = customer(stack)
    assert ask(stack, key).choices  # postpaid by default: served
    ok(admin("PATCH", f"/admin/tenants/{tenant}/billing", {"billing_mode": "prepaid"}))
    before = metric(stack, REFUSED)
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as caught:
        ask(stack, key)  # max_retries=2: the SDK reads x-should-retry and gives up at once
    assert time.monotonic() - started < 5
    error = caught.value
    assert error.code == "insufficient_quota" and error.type == "insufficient_quota"
    assert error.response.headers["x-should-retry"] == "false"
    assert "credits" in error.message
    # one request reached ext_authz: no retry (counted within crosslogic.metrics.FLUSH_EVERY_S)
    time.sleep(2 * FLUSH_EVERY_S)
    assert metric(stack, REFUSED) - before == 1
    balance = ok(admin("GET", f"/admin/tenants/{tenant}/balance"))
    assert (balance["billing_mode"], balance["quota_reason"]) == ("prepaid", "credits_exhausted")

    grant = ok(admin("POST", f"/admin/tenants/{tenant}/credits", {"amount_usd": "1.00"}))
    assert grant["amount_usd"] == "1.0000000000" and grant["live"] is True
    wait_until("the grant to restore the tenant", lambda: served(stack, key), timeout=5)
    balance = ok(admin("GET", f"/admin/tenants/{tenant}/balance"))
    assert balance["quota_reason"] is None and balance["credits_usd"] == "1.0000000000"


def test_free_tier_tenant_is_refused_after_its_allowance(stack: Stack, admin: Admin) -> None:
    plan = f"free-{time.monotonic_ns()}"
    ok(
        admin(
            "PUT",
            f"/admin/plans/{plan}",
            {"billing_mode": "prepaid", "monthly_allowance_tokens": 30},
        )
    )
    tenant, key = customer(stack)
    ok(admin("PATCH", f"/admin/tenants/{tenant}/billing", {"plan": plan}))
    assert ask(stack, key).choices  # within the allowance: no credits needed
    # each request uses ~6 tokens; billing records them and flips the tenant within seconds
    wait_until("the allowance to run out", lambda: refusal(stack, key) is not None, timeout=20)
    error = refusal(stack, key)
    assert error is not None and error.code == "insufficient_quota"
    assert "free allowance" in error.message
    billing = ok(admin("GET", f"/admin/tenants/{tenant}/billing"))
    assert billing["quota_reason"] == "allowance_used"
    used = run_db(
        stack, "SELECT sum(total_tokens) AS n FROM usage_records WHERE tenant_id = $1", tenant
    )[0]["n"]
    assert used >= 30


def test_postpaid_tenant_is_cut_off_at_its_spend_cap_only(stack: Stack, admin: Admin) -> None:
    tenant, key = customer(stack)
    change = {"billing_mode": "postpaid", "monthly_spend_cap_usd": "0.000005"}
    ok(admin("PATCH", f"/admin/tenants/{tenant}/billing", change))
    assert ask(stack, key).choices
    wait_until("the spend cap to be reached", lambda: refusal(stack, key) is not None, timeout=20)
    error = refusal(stack, key)
    assert error is not None and "spend cap" in error.message
    spent = run_db(
        stack, "SELECT sum(cost_usd) AS c FROM usage_records WHERE tenant_id = $1", tenant
    )[0]["c"]
    assert float(spent) >= 0.000005
    ok(admin("PATCH", f"/admin/tenants/{tenant}/billing", {"monthly_spend_cap_usd": None}))
    wait_until("the tenant to be served without a cap", lambda: served(stack, key), timeout=5)


def test_plans_carry_request_and_token_limits_for_every_key(stack: Stack) -> None:
    assert stack.demo is not None
    client = openai.OpenAI(base_url=stack.base_url, api_key=stack.demo.api_key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1
    )
    assert int(raw.headers["x-ratelimit-limit-tokens"]) > 0
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) >= 0
    assert "x-ratelimit-limit-requests" in raw.headers
    plans = {
        p["subject"]
        for p in run_db(
            stack,
            "SELECT subject FROM rate_limits WHERE scope = 'plan' "
            "AND tokens_per_minute IS NOT NULL",
        )
    }
    assert {"default", "free", "developer", "pro", "enterprise"} <= plans


def test_admin_validation_names_the_field_and_writes_nothing(stack: Stack, admin: Admin) -> None:
    tenant, _ = customer(stack)
    for body, field in (
        ({"amount_usd": 1.5}, "amount_usd"),
        ({"amount_usd": "-3"}, "amount_usd"),
        ({"amount_usd": "1", "expires_at": "tomorrow"}, "expires_at"),
        ({"amount_usd": "1", "currency": "eur"}, "currency"),
    ):
        status, reply = admin("POST", f"/admin/tenants/{tenant}/credits", body)
        assert status == 400 and reply["error"]["param"] == field, reply
    assert ok(admin("GET", f"/admin/tenants/{tenant}/credits"))["data"] == []
    status, reply = admin("PATCH", f"/admin/tenants/{tenant}/billing", {"plan": "no-such-plan"})
    assert status == 404 and reply["error"]["code"] == "plan_not_found"
    status, reply = admin("PATCH", f"/admin/tenants/{tenant}/billing", {"billing_mode": "x"})
    assert status == 400 and reply["error"]["param"] == "billing_mode"
    assert ok(admin("GET", f"/admin/tenants/{tenant}/billing"))["plan"] == "default"
    status, reply = admin("PUT", "/admin/plans/Bad", {})
    assert status == 400 and reply["error"]["param"] == "name"
    status, reply = admin(
        "PUT", "/admin/plans/x", {"monthly_allowance_usd": "1", "monthly_allowance_tokens": 5}
    )
    assert status == 400 and reply["error"]["param"] == "monthly_allowance_usd"
    status, _ = admin("GET", "/admin/tenants/not-a-uuid/balance")
    assert status == 404
    names = [p["name"] for p in ok(admin("GET", "/admin/plans"))["data"]]
    assert {"default", "free", "developer", "pro", "enterprise"} <= set(names)


def test_cli_grants_lists_and_reads_the_balance(stack: Stack, cli: Cli) -> None:
    tenant, _ = customer(stack)
    code, _, err = cli("credits", "grant", tenant, "1.5e3")
    assert code == 1 and "'amount_usd'" in err
    code, _, err = cli("plans", "assign", tenant, "--plan", "no-such-plan")
    assert code == 1 and "No plan 'no-such-plan'" in err
    grant = cli_ok(cli("credits", "grant", tenant, "2.50", "--note", "welcome", "--actor", "bob"))
    assert grant["amount_usd"] == "2.5000000000" and grant["actor"] == "cli:bob"
    assert [g["id"] for g in cli_ok(cli("credits", "list", tenant))] == [grant["id"]]
    billing = cli_ok(cli("plans", "assign", tenant, "--plan", "developer", "--spend-cap", "none"))
    assert billing["plan"] == "developer"
    balance = cli_ok(cli("credits", "balance", tenant))
    assert balance["billing_mode"] == "prepaid" and balance["balance_usd"] == "2.5000000000"
    assert balance["monthly_allowance_usd"] == "5.0000000000" and balance["quota_reason"] is None
    audited = run_db(
        stack,
        "SELECT action FROM audit_log WHERE entity_id = ANY($1::text[]) ORDER BY id",
        [tenant, str(grant["id"])],
    )
    assert [r["action"] for r in audited][-2:] == ["credit_grant.create", "tenant.billing"]
    plan = cli_ok(cli("plans", "set", f"p{time.monotonic_ns()}", "--allowance-usd", "3"))
    assert plan["monthly_allowance_usd"] == "3.0000000000" and plan["billing_mode"] == "postpaid"


def test_the_sweep_clears_a_state_that_no_longer_holds_and_announces_it(stack: Stack) -> None:
    """What renews allowances at a month's start and expires grants: the sweep recomputes
    every tenant quota concerns and tells ext_authz of each change."""
    tenant, key = customer(stack)
    run_db(
        stack,
        "UPDATE tenants SET quota_reason = 'allowance_used', quota_exhausted_at = now() "
        "WHERE id = $1",
        tenant,
    )
    # (billing's own sweep may get there first: the outcome is the same)

    async def sweep() -> None:
        pool = await create_pool(stack.settings, min_size=1, max_size=1)
        try:
            await QuotaKeeper(pool, CollectorRegistry()).step(sweep=True)
        finally:
            await pool.close()

    asyncio.run(sweep())
    reason = run_db(stack, "SELECT quota_reason FROM tenants WHERE id = $1", tenant)
    assert reason[0]["quota_reason"] is None
    wait_until("the tenant to be served again", lambda: served(stack, key), timeout=5)
