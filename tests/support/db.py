"""The stack's PostgreSQL, from the tests: queries on a fresh connection, usage rows."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from crosslogic.db.connection import connect
from crosslogic.stack import Stack
from tests.support.waiting import wait_until


def run_db(stack: Stack, query: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await connect(stack.settings)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def connect_and(stack: Stack, work: Any) -> Any:
    """Run ``work(conn)`` (a coroutine function) on a fresh connection to the stack's DB."""

    async def go() -> Any:
        conn = await connect(stack.settings)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


def usage_row(stack: Stack, request_id: str, *, timeout: float = 10.0) -> list[dict[str, object]]:
    """The usage rows of ``request_id`` once billing wrote one ([] if none within ``timeout``)."""

    def rows() -> list[dict[str, object]]:
        found = run_db(stack, "SELECT * FROM usage_records WHERE request_id = $1", request_id)
        return [dict(r) for r in found]

    try:
        return wait_until(f"a usage row of {request_id}", rows, timeout=timeout)
    except TimeoutError:
        return []
