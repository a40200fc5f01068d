"""Four-layer limits through Envoy: exact under concurrency, tokens on streams, headers the
openai SDK understands, and Redis failing under load."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from crosslogic.stack import Stack
from tests.conftest import CreatedKey, new_key, own_system, run_db

MODEL = "demo-llama"


@pytest.fixture(scope="module")
def authz_stack() -> Iterator[Stack]:
    """A second system whose ext_authz makes the rate-limit decisions (RATELIMIT_AT=authz)."""
    with own_system(nodes=1, ratelimit_at="authz") as running:
        yield running


@pytest.fixture(params=["service", "authz"])
def limited(request: pytest.FixtureRequest) -> Stack:
    """Every test below runs with the decision in the rate-limit service and in ext_authz."""
    name = "stack" if request.param == "service" else "authz_stack"
    chosen: Stack = request.getfixturevalue(name)
    return chosen


def set_limit(stack: Stack, scope: str, subject: str, **fields: Any) -> None:
    layer = "global" if scope == "global" else scope
    columns = ", ".join(fields)
    values = ", ".join(f"${i + 4}" for i in range(len(fields)))
    updates = ", ".join(f"{c} = excluded.{c}" for c in fields)
    run_db(
        stack,
        f"INSERT INTO rate_limits (scope, subject, layer, {columns}) VALUES ($1, $2, $3, {values}) "
        f"ON CONFLICT (scope, subject, layer) DO UPDATE SET {updates}",
        scope,
        subject,
        layer,
        *fields.values(),
    )
    notify_and_wait(stack)


def notify_and_wait(stack: Stack) -> None:
    run_db(stack, "SELECT pg_notify('crosslogic_limits', 'test')")
    time.sleep(0.5)  # every rate-limit process reloads on the notification (milliseconds)


def fresh_tenant(stack: Stack) -> tuple[str, str]:
    tenant = run_db(
        stack,
        "INSERT INTO tenants (name) VALUES ($1) RETURNING id::text",
        f"rl-{time.monotonic_ns()}",
    )[0]["id"]
    env = run_db(
        stack,
        "INSERT INTO environments (tenant_id, name) VALUES ($1, 'prod') RETURNING id::text",
        tenant,
    )[0]["id"]
    return tenant, env


def key_in(stack: Stack, tenant: str, env: str) -> CreatedKey:
    return new_key(stack, environment_id=env)  # the environment names its tenant


def ask(stack: Stack, key: str, **kw: Any) -> Any:
    client = openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=kw.pop("retries", 0))
    return client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1, **kw
    )


def burst(stack: Stack, keys: list[str], count: int) -> list[int]:
    """``count`` requests from 8 concurrent clients, round-robin over ``keys``: statuses."""

    def one(i: int) -> int:
        try:
            ask(stack, keys[i % len(keys)])
            return 200
        except openai.APIStatusError as exc:
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
    stack.stop_redis()
    try:
        slowest = 0.0
        for _ in range(20):
            started = time.monotonic()
            assert ask(stack, open_key.plaintext).parse().choices  # fails open
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 0.5, f"a request took {slowest:.3f} s during the outage"
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as caught:
            ask(stack, closed_key.plaintext)
        assert caught.value.code == "rate_limit_unavailable"
        assert time.monotonic() - started < 0.5
    finally:
        stack.start_redis()
    deadline = time.monotonic() + 5
    while True:  # back to Redis within the breaker's second
        try:
            assert ask(stack, closed_key.plaintext).parse().choices
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline
            time.sleep(0.2)


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

    first = one_request()
    assert 900 < int(first.headers["x-ratelimit-remaining-tokens"]) < 1000
    deadline = time.monotonic() + 10
    request_id = first.headers["x-request-id"]
    while not run_db(stack, "SELECT 1 FROM usage_records WHERE request_id = $1", request_id):
        assert time.monotonic() < deadline, "billing never recorded the request"
        time.sleep(0.1)
    time.sleep(0.3)  # settlement follows the commit of the usage row
    # settled: 2000 - 17 (the first, real) - 1025 (the second, reserved)
    assert int(one_request().headers["x-ratelimit-remaining-tokens"]) > 900
