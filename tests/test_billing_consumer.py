"""Access-log parsing and the consumer's exactly-once writes, against the real Postgres."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from crosslogic.billing.accesslog import MalformedEntry, Settlement, parse
from crosslogic.billing.consumer import AccessLogConsumer, BillingMetrics
from crosslogic.billing.offsets import split_complete
from crosslogic.billing.settlement import TokenSettler, per_counter
from crosslogic.db.connection import create_pool
from crosslogic.ports import free_port
from crosslogic.redis_pipe import PipelinedRedis
from crosslogic.stack import Stack
from tests.support.db import run_db


def log_entry(**changes: object) -> dict[str, object]:
    """One access-log entry as Envoy writes it (of made-up ids), changed as asked."""
    base: dict[str, object] = {
        "request_id": str(uuid.uuid4()),
        "start_time": "2026-11-27T10:00:00.123Z",
        "duration_ms": 12,
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "flags": "-",
        "upstream_host": "127.0.0.1:1",
        "upstream_node": "n1",
        "tenant_id": str(uuid.uuid4()),
        "environment_id": str(uuid.uuid4()),
        "api_key_id": str(uuid.uuid4()),
        "key_id": "k",
        "model": "demo-llama",
        "model_id": 1.0,
        "streamed": None,
        "prompt_tokens": 10.0,
        "completion_tokens": 20.0,
    }
    base.update(changes)
    return base


def entry(stack: Stack, **changes: object) -> dict[str, object]:
    """An access-log entry of the stack's demo key, which the consumer can write."""
    assert stack.demo is not None
    ids = {
        "tenant_id": stack.demo.tenant_id,
        "environment_id": stack.demo.environment_id,
        "api_key_id": stack.demo.api_key_id,
    }
    return log_entry(**{**ids, **changes})


def test_parse_skips_what_is_not_billable() -> None:
    line = json.dumps({"request_id": "r", "api_key_id": None, "model_id": None}).encode()
    assert parse(line) == (None, None)
    with pytest.raises(MalformedEntry):
        parse(b"not json")


def test_split_keeps_partial_lines_for_later() -> None:
    assert split_complete(b'{"a":1}\n{"b":') == ([b'{"a":1}'], 8)
    assert split_complete(b"partial") == ([], 0)


def test_consumer_writes_each_request_once_even_when_replayed(stack: Stack, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    first = entry(stack)
    rate_limited = entry(stack, upstream_host=None, upstream_node=None, status=429)
    log.write_bytes(
        (
            json.dumps(first)
            + "\n"
            + json.dumps(rate_limited)
            + "\n"
            + "garbage\n"
            + json.dumps(entry(stack))[:30]
        ).encode()
    )

    async def consume(path: Path) -> None:
        pool = await create_pool(stack.settings)
        try:
            consumer = AccessLogConsumer(pool, path, BillingMetrics(CollectorRegistry()))
            while await consumer.step():
                pass
        finally:
            await pool.close()

    asyncio.run(consume(log))
    rows = run_db(stack, "SELECT * FROM usage_records WHERE request_id = $1", first["request_id"])
    assert len(rows) == 1
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == (10, 20)
    assert rows[0]["total_tokens"] == 30 and rows[0]["node_id"] == "n1"
    # 10 * 0.20 / 1e6 + 20 * 0.60 / 1e6 (the demo model's prices)
    assert str(rows[0]["cost_usd"]) == "0.0000140000"
    assert not run_db(
        stack, "SELECT 1 FROM usage_records WHERE request_id = $1", rate_limited["request_id"]
    )
    # a crash before the offset committed means a replay: still one row
    run_db(stack, "DELETE FROM access_log_offsets WHERE path = $1", str(log))
    asyncio.run(consume(log))
    assert (
        len(run_db(stack, "SELECT 1 FROM usage_records WHERE request_id = $1", first["request_id"]))
        == 1
    )


def test_settlement_of_each_kind_of_ending() -> None:
    reservation = {"tokens": 100.0, "counters": [["k", 600000.0]]}
    base = {"request_id": "r", "reservation": reservation, "upstream_host": "n:1", "status": 200}
    usage = parse_entry({**base, "prompt_tokens": 5.0, "completion_tokens": 20.0})
    assert usage is not None and usage.delta_tokens == 25 - 100
    refused = parse_entry({**base, "upstream_host": None, "status": 503})
    assert refused is not None and refused.delta_tokens == -100
    abandoned = parse_entry({**base, "completion_seen": 7.0, "prompt_estimate": 3.0})
    assert abandoned is not None and abandoned.delta_tokens == 10 - 100
    assert parse_entry(base) is None  # nothing known: the reservation stands
    assert parse_entry({**base, "reservation": None}) is None


def parse_entry(entry: dict[str, object]) -> Settlement | None:
    return parse(json.dumps(entry).encode())[1]


def test_a_batch_settles_each_counter_once() -> None:
    items = [
        Settlement("r1", (("tenant", 10.0), ("key", 100.0)), -5),
        Settlement("r2", (("tenant", 10.0),), 2),
    ]
    assert per_counter(items) == {"tenant": -30.0, "key": -500.0}


def test_an_abandoned_stream_is_recorded_from_what_the_client_was_sent() -> None:
    entry = {
        **log_entry(),
        "prompt_tokens": None,
        "completion_tokens": None,
        "completion_seen": 7.0,
        "prompt_estimate": 3.0,
        "flags": "DC",
    }
    record, _ = parse(json.dumps(entry).encode())
    assert record is not None
    assert (record.prompt_tokens, record.completion_tokens, record.usage_estimated) == (3, 7, True)


def test_failed_settlements_are_kept_summed_per_counter_and_bounded() -> None:
    """Redis unreachable (a port nobody listens on): corrections wait, summed per counter,
    within the memory bound, and nothing raises."""

    async def go() -> tuple[int, float]:
        redis = PipelinedRedis("127.0.0.1", free_port(), timeout=0.5)
        now = [0.0]
        settler = TokenSettler(redis, CollectorRegistry(), clock=lambda: now[0], max_pending=2)
        await settler.settle([Settlement("r1", (("a", 10.0), ("b", 1.0)), -5)])
        assert settler.pending == 1
        # within the backoff: merged, not tried again
        await settler.settle([Settlement("r2", (("a", 10.0), ("c", 1.0)), 2)])
        now[0] += 60
        await settler.flush()  # tried again and failed again: still kept
        return settler.pending, settler.pending_adjustments()["a"]

    pending, a = asyncio.run(go())
    assert pending == 2
    assert a == -30.0  # -50 + 20; "c" was over the bound of two counters and dropped


def test_a_boot_followed_by_another_in_the_log_is_known_superseded(
    stack: Stack, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    old, new = "a" * 16, "b" * 16
    lines = [entry(stack, boot=old), entry(stack, boot=old), entry(stack, boot=new)]
    log.write_bytes(b"".join(json.dumps(e).encode() + b"\n" for e in lines))

    async def consume() -> AccessLogConsumer:
        pool = await create_pool(stack.settings)
        try:
            consumer = AccessLogConsumer(pool, log, BillingMetrics(CollectorRegistry()))
            while await consumer.step():
                pass
            return consumer
        finally:
            await pool.close()

    consumer = asyncio.run(consume())
    assert consumer.boots == {old, new}
    # every line the old boot wrote lies before the offset committed with the new one's
    assert consumer.superseded == {old: (log.stat().st_ino, log.stat().st_size)}
