"""Price changes through Envoy with the openai SDK: each request is priced by the list price
and the tenant override in force when it started, and its usage row says which; billing
hears of changes (NOTIFY) even after its listener connection was dropped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from crosslogic.billing.price_store import PriceCache, listen_forever
from crosslogic.billing.pricing import round_cost
from crosslogic.contracts import channels
from crosslogic.db.connection import connect
from crosslogic.stack import Stack
from tests.support.admin import Admin, ok
from tests.support.db import usage_row
from tests.support.inference import client
from tests.support.system import MODEL
from tests.support.tenants import fresh_tenant, key_in
from tests.support.waiting import wait_until

D = Decimal


def _send(stack: Stack, key: str, *, embedding: bool = False) -> str:
    sdk = client(stack, key)
    if embedding:
        raw: Any = sdk.embeddings.with_raw_response.create(model=MODEL, input="three word input")
    else:
        raw = sdk.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "price me"}], max_tokens=3
        )
    return str(raw.headers["x-request-id"])


def _row(stack: Stack, request_id: str) -> dict[str, Any]:
    rows = usage_row(stack, request_id)
    assert len(rows) == 1, request_id
    return rows[0]


def _at(version: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(version["effective_at"])


def test_a_price_change_mid_hour_prices_each_request_by_its_own_time(
    stack: Stack, admin: Admin
) -> None:
    tenant, env = fresh_tenant(stack)
    key = key_in(stack, tenant, env).plaintext
    history = ok(admin("GET", f"/admin/models/{MODEL}/prices"))["data"]
    old = history[-1]
    start = datetime.now(UTC)
    new = ok(
        admin(
            "POST",
            f"/admin/models/{MODEL}/prices",
            {
                "prompt_per_mtok": "0.45",
                "completion_per_mtok": "1.35",
                "embedding_per_mtok": "0.05",
                "effective_at": (start + timedelta(seconds=2)).isoformat(),
            },
        )
    )
    discount = ok(
        admin(
            "POST",
            f"/admin/tenants/{tenant}/prices",
            {
                "model": MODEL,
                "discount_percent": "12.5",
                "effective_at": (start + timedelta(seconds=4)).isoformat(),
            },
        )
    )
    try:
        # a chat and an embedding under each rule: before, between and after the changes
        sent = [_send(stack, key), _send(stack, key, embedding=True)]
        for change in (new, discount):
            wait_until("the change's time", lambda c=change: datetime.now(UTC) >= _at(c))
            sent += [_send(stack, key), _send(stack, key, embedding=True)]
        rows = [_row(stack, rid) for rid in sent]
    finally:
        # the other tests keep the demo model's usual price (a new version: never retroactive)
        fields = ("prompt_per_mtok", "completion_per_mtok", "embedding_per_mtok")
        ok(admin("POST", f"/admin/models/{MODEL}/prices", {k: old[k] for k in fields}))
    seen = set()
    for row in rows:
        started = row["started_at"]
        version = new if started >= _at(new) else old
        override = discount if started >= _at(discount) else None
        seen.add((version["id"], None if override is None else override["id"]))
        assert row["price_id"] == version["id"], row
        assert row["tenant_price_id"] == (None if override is None else override["id"]), row
        assert row["region_code"] == "local" and row["price_multiplier"] == 1
        if row["endpoint"] == "/v1/embeddings":
            exact = row["prompt_tokens"] * D(version["embedding_per_mtok"]) / 1_000_000
        else:
            exact = (
                row["prompt_tokens"] * D(version["prompt_per_mtok"])
                + row["completion_tokens"] * D(version["completion_per_mtok"])
            ) / 1_000_000
        if override is not None:
            exact = exact * D("0.875")
        assert row["cost_usd"] == round_cost(exact), row
        assert row["cost_usd"] > 0
    assert len(seen) == 3, seen  # each of the three rules priced some request


def test_billing_hears_price_changes_across_a_dropped_listener(stack: Stack) -> None:
    async def until(what: str, probe: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10
        while not probe():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    async def scenario() -> None:
        cache = PriceCache()
        listeners: list[asyncpg.Connection] = []

        async def connect_listener() -> asyncpg.Connection:
            listeners.append(await connect(stack.settings))
            return listeners[-1]

        task = asyncio.create_task(listen_forever(connect_listener, cache, check_every=0.1))
        other = await connect(stack.settings)
        try:
            await until("a listener", lambda: bool(listeners))
            await cache.book(other)
            await other.execute("SELECT pg_notify($1, '{}')", channels.PRICES)
            await until("the notification", lambda: cache.stale)
            await cache.book(other)
            pid = listeners[0].get_server_pid()
            await other.execute("SELECT pg_terminate_backend($1)", pid)
            await until("a new listener", lambda: len(listeners) == 2)
            await until("a reload for what was missed", lambda: cache.stale)
            await cache.book(other)
            await other.execute("SELECT pg_notify($1, '{}')", channels.PRICES)
            await until("the notification on the new listener", lambda: cache.stale)
        finally:
            task.cancel()
            await other.close()

    asyncio.run(scenario())
