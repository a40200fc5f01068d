"""Four-layer limits through Envoy: exact under concurrency, tokens on streams, headers the
openai SDK understands, and Redis failing under load."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from crosslogic.ratelimit.limiter import BREAKER_OPEN_S
from crosslogic.stack import Stack
from tests.support.db import run_db
from tests.support.metrics import metric
from tests.support.ratelimits import notify_and_wait, set_limit
from tests.support.system import MODEL, outage
from tests.support.tenants import fresh_tenant, key_in
from tests.support.waiting import wait_until

REDIS_ERRORS = "crosslogic_ratelimit_redis_errors_total"
DECIDERS = ("extauthz-", "ratelimit-")  # the processes that may decide limits

SETTLED = 'crosslogic_billing_token_settlements_total{result="ok"}'


def ask(stack: Stack, key: str, **kw: Any) -> Any:
    client = openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=kw.pop("retries", 0))
    return client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1, **kw
    )


def burst(stack: Stack, keys: list[str], count: int) -> list[int]:
    """``count`` requests from 8 concurrent clients, round-robin over ``keys``: statuses.
    Anything but an answer or a rate-limit refusal fails the test with its body."""

    def one(i: int) -> int:
        try:
            ask(stack, keys[i % len(keys)])
            return 200
        except openai.APIStatusError as exc:
            assert exc.status_code == 429, (exc.status_code, exc.response.text)
            return exc.status_code

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


@pytest.mark.parametrize("layer", ["key", "environment", "tenant"])
def test_each_layer_refuses_at_its_limit_under_concurrency(limited: Stack, layer: str) -> None:
    stack = limited
    tenant, env = fresh_tenant(stack)
    keys = [key_in(stack, tenant, env).plaintext for _ in range(3)]
    subject = {"tenant": tenant, "environment": env}.get(layer)
    if layer == "key":  # one key limited: use only that key
        subject = run_db(
            stack, "SELECT id::text FROM api_keys WHERE key_id = $1", keys[0].split("_")[1]
        )[0]["id"]
        keys = keys[:1]
    set_limit(stack, layer, subject, requests_per_minute=10)
    statuses = burst(stack, keys, 30)
    # GCRA per minute: 10 at once, then one every 6 s; the burst lasts far less than 6 s
    assert statuses.count(200) == 10 and statuses.count(429) == 20


def test_global_layer_is_one_limit_across_rate_limit_processes(limited: Stack) -> None:
    stack = limited
    tenant, env = fresh_tenant(stack)
    keys = [key_in(stack, tenant, env).plaintext for _ in range(4)]
    run_db(stack, "DELETE FROM rate_limits WHERE scope = 'global'")
    try:
        set_limit(stack, "global", "", requests_per_minute=12)
        # two rate-limit processes (conftest) share Redis: 12 in all, not 12 each
        statuses = burst(stack, keys, 40)
        assert statuses.count(200) == 12
    finally:
        run_db(stack, "DELETE FROM rate_limits WHERE scope = 'global'")
        notify_and_wait(stack)


def test_429_carries_what_the_sdk_needs_and_the_sdk_retries(limited: Stack) -> None:
    stack = limited
    tenant, env = fresh_tenant(stack)
    key = key_in(stack, tenant, env)
    set_limit(stack, "key", key.api_key_id, requests_per_second=1, tokens_per_minute=100_000)
    first = ask(stack, key.plaintext)
    headers = first.headers
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-limit-tokens"] == "100000"
    assert int(headers["x-ratelimit-remaining-tokens"]) < 100_000
    with pytest.raises(openai.RateLimitError) as caught:
        ask(stack, key.plaintext)
    assert caught.value.code == "rate_limit_exceeded" and caught.value.param == "key"
    assert caught.value.response.headers["retry-after"] == "1"
    started = time.monotonic()
    assert ask(stack, key.plaintext, retries=2).parse().choices  # waited Retry-After, then OK
    assert time.monotonic() - started >= 0.5


def test_token_limit_holds_on_streams_within_one_reservation(limited: Stack) -> None:
    stack = limited
    tenant, env = fresh_tenant(stack)
    key = key_in(stack, tenant, env)
    set_limit(stack, "key", key.api_key_id, tokens_per_minute=100)
    client = openai.OpenAI(base_url=stack.base_url, api_key=key.plaintext, max_retries=0)
    used = 0
    admitted = 0
    for _ in range(10):
        try:
            stream = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=30,
                stream=True,
                stream_options={"include_usage": True},
            )
        except openai.RateLimitError as exc:
            assert exc.body["type"] == "tokens"  # type: ignore[index]
            break
        chunks = list(stream)
        used += chunks[-1].usage.total_tokens  # type: ignore[union-attr]
        admitted += 1
    reservation = 30 + 2  # max_tokens + the prompt estimate
    assert admitted >= 3 and used <= 100 + reservation


def test_redis_outage_fails_open_fast_and_closed_layers_refuse(limited: Stack) -> None:
    stack = limited
    if stack.redis is None:
        pytest.skip("an external Redis cannot be killed from the tests")
    tenant, env = fresh_tenant(stack)
    open_key = key_in(stack, tenant, env)
    closed_key = key_in(stack, tenant, env)
    set_limit(stack, "key", closed_key.api_key_id, requests_per_minute=1000, fail_mode="closed")
    assert ask(stack, closed_key.plaintext).parse().choices
    errors_before = metric(stack, REDIS_ERRORS)
    outage(stack, stack.redis)
    started = time.monotonic()
    try:
        for _ in range(20):
            assert ask(stack, open_key.plaintext).parse().choices  # fails open
        with pytest.raises(openai.RateLimitError) as caught:
            ask(stack, closed_key.plaintext)
        assert caught.value.code == "rate_limit_unavailable"
        # fast: Redis was tried once per breaker period per process, not once per request
        periods = (time.monotonic() - started) / BREAKER_OPEN_S + 1
        deciders = len([c for c in stack.supervisor.children if c.name.startswith(DECIDERS)])
        assert metric(stack, REDIS_ERRORS) - errors_before <= deciders * periods
    finally:
        stack.start_redis()

    def passes() -> bool:
        try:
            assert ask(stack, closed_key.plaintext).parse().choices
            return True
        except openai.RateLimitError:
            return False

    wait_until("limits decided in Redis again", passes, timeout=5)  # within the breaker's second


def test_reservations_are_settled_to_the_real_usage(limited: Stack) -> None:
    stack = limited
    tenant, env = fresh_tenant(stack)
    key = key_in(stack, tenant, env)
    set_limit(stack, "key", key.api_key_id, tokens_per_minute=2000)
    client = openai.OpenAI(base_url=stack.base_url, api_key=key.plaintext, max_retries=0)

    def one_request() -> Any:
        # no max_tokens: 1024 completion tokens are reserved; the node generates 16
        return client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}]
        )

    settled_before = metric(stack, SETTLED)
    first = one_request()
    assert 900 < int(first.headers["x-ratelimit-remaining-tokens"]) < 1000
    request_id = first.headers["x-request-id"]
    wait_until(
        "billing to record the request",
        lambda: run_db(stack, "SELECT 1 FROM usage_records WHERE request_id = $1", request_id),
        timeout=10,
    )
    # settlement follows the commit of the usage row
    wait_until("the settlement", lambda: metric(stack, SETTLED) > settled_before, timeout=10)
    # settled: 2000 - 17 (the first, real) - 1025 (the second, reserved)
    assert int(one_request().headers["x-ratelimit-remaining-tokens"]) > 900
