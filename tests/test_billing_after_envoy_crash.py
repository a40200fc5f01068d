"""Usage survives an Envoy crash: what a SIGKILLed Envoy never wrote to its access log is
billed from the admission journal, once, at its estimate; in normal operation the journal
empties and rows are exact."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest
import redis
from prometheus_client import CollectorRegistry

from crosslogic.billing.consumer import AccessLogConsumer, BillingMetrics
from crosslogic.billing.recovery import JournalReconciler, RecoveryMetrics
from crosslogic.contracts.journal import BOOTS_KEY, Admission, encode, journal_key, new_boot_id
from crosslogic.db.connection import create_pool
from crosslogic.extauthz.decision import estimate_prompt, estimate_tokens
from crosslogic.journal.store import JournalStore
from crosslogic.probes import http_ok
from crosslogic.redis_pipe import PipelinedRedis
from crosslogic.shapes import SHAPES
from crosslogic.stack import Stack
from tests.support.db import run_db
from tests.support.ratelimits import set_limit
from tests.support.system import MODEL, own_system
from tests.support.tenants import fresh_tenant, key_in
from tests.support.waiting import wait_until


def journal(stack: Stack) -> redis.Redis:
    return redis.Redis(port=stack.settings.redis_port, socket_timeout=2)


def rows_of(stack: Stack, ids: list[str]) -> dict[str, list[dict[str, object]]]:
    rows = run_db(stack, "SELECT * FROM usage_records WHERE request_id = ANY($1::text[])", ids)
    found: dict[str, list[dict[str, object]]] = {i: [] for i in ids}
    for row in rows:
        found[row["request_id"]].append(dict(row))
    return found


def billing_knows_boot(stack: Stack, boot: str) -> bool:
    return bool(run_db(stack, "SELECT 1 FROM envoy_boots WHERE boot_id = $1", boot))


def send_requests(client: openai.OpenAI) -> dict[str, tuple[str, dict[str, object]]]:
    """JSON and streamed requests of each endpoint; request id -> (endpoint, body)."""
    sent: dict[str, tuple[str, dict[str, object]]] = {}
    for i in range(3):
        body: dict[str, object] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"count to {i} please"}],
            "max_tokens": 4 + i,
        }
        raw = client.chat.completions.with_raw_response.create(**body)  # type: ignore[call-overload]
        assert raw.parse().choices
        sent[raw.headers["x-request-id"]] = ("/v1/chat/completions", body)
        streamed = {**body, "stream": True}
        raw = client.chat.completions.with_raw_response.create(**streamed)  # type: ignore[call-overload]
        assert list(raw.parse())  # the whole stream, usage chunk included
        sent[raw.headers["x-request-id"]] = ("/v1/chat/completions", streamed)
    body = {"model": MODEL, "prompt": "once upon a time", "max_tokens": 3}
    raw = client.completions.with_raw_response.create(**body)  # type: ignore[call-overload]
    assert raw.parse().choices
    sent[raw.headers["x-request-id"]] = ("/v1/completions", body)
    return sent


@pytest.fixture(params=sorted(SHAPES))
def slow_log_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """A system of its own (this test kills its Envoy) whose Envoy writes its access log
    once a minute, so that a kill loses the lines of every request just made; in every
    shape (crosslogic/shapes.py)."""
    with own_system(
        nodes=1, envoy_log_flush_interval=60.0, extauthz_workers=1, **SHAPES[request.param]
    ) as running:
        yield running


def test_usage_of_a_killed_envoy_is_billed_from_the_journal(slow_log_stack: Stack) -> None:
    stack = slow_log_stack
    assert stack.demo is not None
    dead_boot = stack.envoy_boot_id
    wait_until("billing to learn the live Envoy", lambda: billing_knows_boot(stack, dead_boot))
    client = openai.OpenAI(base_url=stack.base_url, api_key=stack.demo.api_key, max_retries=0)
    sent = send_requests(client)
    ids = list(sent)
    # journaled under the request id the client saw (Envoy's x-request-id)
    assert None not in journal(stack).hmget(journal_key(dead_boot), ids)
    assert journal(stack).sismember(BOOTS_KEY, dead_boot)  # and the boot named in the set

    killed = stack.envoy.proc  # type: ignore[union-attr]
    killed.kill()
    killed.wait(10)
    logged = stack.settings.access_log.read_text()
    unlogged = [i for i in ids if i not in logged]
    assert unlogged, "Envoy flushed every line before the kill: nothing was tested"

    # the supervisor starts a new Envoy, under a new boot id
    wait_until(
        "a new Envoy",
        lambda: stack.envoy_boot_id != dead_boot and http_ok(f"{stack.envoy_admin_url}/ready"),
    )
    wait_until(
        "every request to have a usage row",
        lambda: all(rows_of(stack, ids).values()),
        timeout=60,
    )
    rows = rows_of(stack, ids)
    for request_id, (endpoint, body) in sent.items():
        (row,) = rows[request_id]  # exactly one
        if request_id in unlogged:
            prompt = estimate_prompt(endpoint, body)
            assert row["source"] == "journal" and row["usage_estimated"] is True
            assert row["prompt_tokens"] == prompt
            assert row["completion_tokens"] == estimate_tokens(endpoint, body) - prompt
            assert row["streamed"] is bool(body.get("stream"))
        else:
            assert row["source"] == "access_log" and row["usage_estimated"] is False
    wait_until(
        "the dead boot's journal to be deleted",
        lambda: not journal(stack).exists(journal_key(dead_boot)),
    )
    assert not journal(stack).sismember(BOOTS_KEY, dead_boot)
    reconciled = run_db(
        stack,
        "SELECT recovered FROM envoy_boots WHERE boot_id = $1 AND reconciled_at IS NOT NULL",
        dead_boot,
    )
    assert [r["recovered"] for r in reconciled] == [len(unlogged)]
    # the new Envoy serves and journals under its own boot
    assert client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "again"}], max_tokens=1
    ).choices


def test_in_normal_operation_the_journal_empties_and_rows_are_exact(
    stack: Stack, client: openai.OpenAI
) -> None:
    sent = send_requests(client)
    ids = list(sent)
    wait_until("usage rows", lambda: all(rows_of(stack, ids).values()))
    for found in rows_of(stack, ids).values():
        (row,) = found
        assert row["source"] == "access_log" and row["usage_estimated"] is False
    key = journal_key(stack.envoy_boot_id)
    wait_until(
        "billing to clear the journal entries",
        lambda: journal(stack).hmget(key, ids) == [None] * len(ids),
    )


def test_a_refused_request_leaves_no_journal_entry(limited: Stack) -> None:
    """Refused after ext_authz journaled it (by the rate-limit filter, or by ext_authz's own
    limiter in the same round trip): the entry must go, or a dead Envoy's leftovers would
    bill a request that never ran."""
    stack = limited
    tenant, env = fresh_tenant(stack)
    key = key_in(stack, tenant, env)
    set_limit(stack, "key", key.api_key_id, requests_per_minute=1)
    own = openai.OpenAI(base_url=stack.base_url, api_key=key.plaintext, max_retries=0)
    messages = [{"role": "user", "content": "x"}]
    served = own.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, max_tokens=1
    )
    with pytest.raises(openai.RateLimitError) as caught:
        own.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    ids = [served.headers["x-request-id"], caught.value.response.headers["x-request-id"]]
    wait_until(
        "both journal entries to be gone",
        lambda: journal(stack).hmget(journal_key(stack.envoy_boot_id), ids) == [None, None],
    )


def test_a_dead_boot_billing_never_heard_of_is_found_through_the_journal(
    stack: Stack, tmp_path: Path
) -> None:
    # An Envoy that lived and died while billing was away, and flushed no line: neither its
    # admin nor the log ever named it to billing; only the journal's set of boots does.
    assert stack.demo is not None
    boot, live = new_boot_id(), new_boot_id()
    request_id = f"unseen-{uuid.uuid4()}"
    (model,) = run_db(stack, "SELECT id FROM models WHERE name = $1", MODEL)
    record = Admission(
        tenant_id=stack.demo.tenant_id,
        environment_id=stack.demo.environment_id,
        api_key_id=stack.demo.api_key_id,
        model_id=model["id"],
        endpoint="/v1/chat/completions",
        streamed=False,
        prompt_estimate=3,
        token_estimate=10,
        admitted_at=datetime.now(UTC),
    )
    journal(stack).hset(journal_key(boot), request_id, encode(record))
    journal(stack).sadd(BOOTS_KEY, boot)
    log = tmp_path / "access.log"
    log.write_bytes(b"")

    async def reconcile() -> int:
        pool = await create_pool(stack.settings)
        redis_client = PipelinedRedis("127.0.0.1", stack.settings.redis_port, timeout=1.0)
        try:
            consumer = AccessLogConsumer(pool, log, BillingMetrics(CollectorRegistry()))
            await consumer.step()

            async def answering() -> str:
                return live

            reconciler = JournalReconciler(
                pool,
                consumer,
                JournalStore(redis_client),
                RecoveryMetrics(CollectorRegistry()),
                live=answering,
            )
            return await reconciler.step()
        finally:
            redis_client.close()
            await pool.close()

    # the session's own billing service reads the same journal and may bill the boot first:
    # either way the request is billed once, from the journal (the assertions below)
    assert asyncio.run(reconcile()) in (0, 1)
    (row,) = rows_of(stack, [request_id])[request_id]
    assert row["source"] == "journal" and row["usage_estimated"] is True
    assert (row["prompt_tokens"], row["completion_tokens"]) == (3, 7)
    assert not journal(stack).sismember(BOOTS_KEY, boot)
    assert not journal(stack).exists(journal_key(boot))
