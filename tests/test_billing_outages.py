"""Billing recovers by itself: after Postgres returns, after its connections are killed,
after Redis returns (pending settlements land); its gauges tell the truth meanwhile; a
billing loop that dies takes the process down (so its supervisor restarts it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import redis

from crosslogic.billing.main import APPLICATION_NAME
from crosslogic.contracts.counters import counter_key
from crosslogic.metrics import MULTIPROC_ENV
from crosslogic.ports import free_port
from crosslogic.stack import Stack
from tests.support.db import run_db
from tests.support.metrics import metric
from tests.support.ratelimits import set_limit
from tests.support.system import MODEL, outage, own_system, stop_service
from tests.support.tenants import fresh_tenant, key_in
from tests.support.waiting import wait_until


def ask(client: openai.OpenAI, content: str = "x", *, max_tokens: int = 1) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=max_tokens
    )
    assert raw.parse().choices
    return str(raw.headers["x-request-id"])


def recorded(stack: Stack, ids: list[str]) -> bool:
    rows = run_db(stack, "SELECT 1 FROM usage_records WHERE request_id = ANY($1::text[])", ids)
    return len(rows) == len(ids)


@pytest.fixture()
def own_stack() -> Iterator[Stack]:
    """A system of its own: this test stops its Postgres."""
    with own_system(nodes=1, extauthz_workers=1, ratelimit_workers=1) as running:
        yield running


def test_billing_catches_up_after_postgres_returns_and_its_lag_shows_meanwhile(
    own_stack: Stack,
) -> None:
    stack = own_stack
    assert stack.demo is not None and stack.postgres is not None
    client = openai.OpenAI(base_url=stack.base_url, api_key=stack.demo.api_key, max_retries=0)
    first = ask(client)  # the key is now cached: requests pass while Postgres is down
    wait_until("the first row", lambda: recorded(stack, [first]))
    wait_until("no lag", lambda: metric(stack, "crosslogic_billing_access_log_lag_bytes") == 0)

    outage(stack, stack.postgres_child)
    try:
        during = [ask(client)]
        wait_until(
            "the lag to show",
            lambda: (
                metric(stack, "crosslogic_billing_access_log_lag_bytes") > 0
                and metric(stack, "crosslogic_billing_access_log_lag_seconds") > 0
            ),
        )
        lag = metric(stack, "crosslogic_billing_access_log_lag_bytes")
        during += [ask(client) for _ in range(3)]
        wait_until(
            "the lag to grow",
            lambda: metric(stack, "crosslogic_billing_access_log_lag_bytes") > lag,
        )
        assert metric(stack, "crosslogic_billing_step_errors_total") > 0
        # the admin API says "retry", not "bug", while its database is away
        request = urllib.request.Request(
            f"{stack.admin_url}/admin/tenants",
            headers={"Authorization": f"Bearer {stack.settings.admin_token}"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=15)
        assert refused.value.code == 503 and refused.value.headers["Retry-After"] == "1"
        assert json.load(refused.value)["error"]["code"] == "database_unavailable"
        # a service (re)started while the database is away waits for it, not crash-loops
        billing = next(c for c in stack.supervisor.children if c.name == "billing-1")
        billing.proc.kill()
        wait_until(
            "the new billing process to wait for PostgreSQL",
            lambda: (
                re.search(
                    r"PostgreSQL at .* unavailable .*; retrying in",
                    (stack.data_dir / "logs" / "billing-1.log").read_text(),
                )
                is not None
            ),
        )
    finally:
        stack.start_postgres()
    wait_until("billing to catch up", lambda: recorded(stack, during), timeout=60)
    assert billing.restarts == 1 and stack.supervisor.failure is None
    wait_until("no lag", lambda: metric(stack, "crosslogic_billing_access_log_lag_bytes") == 0)
    assert metric(stack, "crosslogic_billing_access_log_lag_seconds") == 0


def test_billing_reconnects_after_its_connections_are_killed(
    stack: Stack, client: openai.OpenAI
) -> None:
    killed = run_db(
        stack,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        APPLICATION_NAME,
    )
    assert killed, "billing holds no connection: nothing was tested"
    ids = [ask(client) for _ in range(3)]
    wait_until("billing to write rows again", lambda: recorded(stack, ids), timeout=30)


def test_settlements_that_fail_while_redis_is_down_land_when_it_returns(
    stack: Stack, client: openai.OpenAI
) -> None:
    if stack.redis is None:
        pytest.skip("an external Redis cannot be killed from the tests")
    tenant, env = fresh_tenant(stack)
    key = key_in(stack, tenant, env)
    # 864 ms per token: a charge of ~100 tokens keeps the counter for over a minute
    set_limit(stack, "key", key.api_key_id, tokens_per_day=100_000)
    counter = counter_key(
        layer="key", ident=key.api_key_id, kind="tokens", period_s=86400, tenant=tenant
    )
    own = openai.OpenAI(base_url=stack.base_url, api_key=key.plaintext, max_retries=0)
    count = stop_service(stack, "billing")  # the line waits in the file
    try:
        # 200 one-letter words: estimated at 101 prompt tokens, counted as 200 by the node,
        # so the settlement is a charge of 99 tokens, which creates the counter
        request_id = ask(own, " ".join(["a"] * 200))
        # only the settlement may recreate the counter (Redis keeps it across a restart)
        redis.Redis(port=stack.settings.redis_port).delete(counter)
        outage(stack, stack.redis)
        try:
            stack.start_service("billing", processes=count)
            wait_until("the row", lambda: recorded(stack, [request_id]), timeout=30)
            wait_until(
                "the failed settlement to be pending",
                lambda: metric(stack, "crosslogic_billing_settlements_pending") > 0,
            )
        finally:
            stack.start_redis()
    finally:
        if not any(c.name.startswith("billing-") for c in stack.supervisor.children):
            stack.start_service("billing", processes=count)
    wait_until(
        "the settlement to land",
        lambda: metric(stack, "crosslogic_billing_settlements_pending") == 0,
        timeout=60,
    )
    ttl = redis.Redis(port=stack.settings.redis_port).pttl(counter)
    assert ttl > 30_000, f"the counter was not charged (PTTL {ttl})"


def test_a_billing_loop_that_dies_ends_the_process_with_an_error(
    stack: Stack, tmp_path: Path
) -> None:
    # An access log that is a directory cannot be read: the lag observer dies of it
    log_dir = tmp_path / "access.log"
    log_dir.mkdir()
    (log_dir / "x").write_text("x")
    env = {
        **stack.child_env(),
        "ACCESS_LOG_PATH": str(log_dir),
        "ENVOY_ADMIN_PORT": str(free_port()),  # not the stack's Envoy: it is not this log's
        MULTIPROC_ENV: str(tmp_path / "metrics"),
    }
    (tmp_path / "metrics").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "crosslogic", "service", "billing"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert b"billing task lag-gauges ended" in proc.stderr
    assert os.path.isdir(log_dir)
