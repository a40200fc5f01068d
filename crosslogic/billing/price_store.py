"""The price book in billing's memory: loaded from PostgreSQL in four queries, never one per
usage row, and reloaded when an operator changes a price (NOTIFY on ``channels.PRICES``), at
least every ``RELOAD_EVERY_S``, and when a batch names a node it does not know yet (a node
registered since the last load: its region). A failed reload keeps the last good book.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeAlias

import asyncpg

from crosslogic.billing.pricing import PriceBook, PriceVersion, Rates, TenantPrice
from crosslogic.contracts import channels
from crosslogic.db.budget import application_name, listen_name
from crosslogic.db.errors import postgres_errors
from crosslogic.errors import Unavailable

log = logging.getLogger(__name__)

RELOAD_EVERY_S = 30.0  # a lost notification (listener reconnecting) is caught up within this
NODES_EVERY_S = 1.0  # at most one extra load per second for batches naming unknown nodes
LISTEN_CHECK_S = 1.0  # how soon a dropped listener connection is noticed and replaced
LISTEN_NAME = listen_name(application_name("billing"))  # in pg_stat_activity

Source: TypeAlias = asyncpg.Pool | asyncpg.Connection


def _rates(row: asyncpg.Record) -> Rates:
    return Rates(row["prompt_per_mtok"], row["completion_per_mtok"], row["embedding_per_mtok"])


async def load_book(db: Source) -> PriceBook:
    versions = [
        PriceVersion(r["id"], r["model_id"], r["effective_at"], _rates(r))
        for r in await db.fetch(
            "SELECT id, model_id, effective_at, prompt_per_mtok, completion_per_mtok, "
            "embedding_per_mtok FROM model_prices"
        )
    ]
    overrides = [
        TenantPrice(
            id=r["id"],
            tenant_id=r["tenant_id"],
            model_id=r["model_id"],
            effective_at=r["effective_at"],
            kind=r["kind"],
            rates=_rates(r) if r["kind"] == "contract" else None,
            discount_percent=r["discount_percent"],
        )
        for r in await db.fetch(
            "SELECT id, tenant_id::text, model_id, effective_at, kind, prompt_per_mtok, "
            "completion_per_mtok, embedding_per_mtok, discount_percent FROM tenant_prices"
        )
    ]
    regions = await db.fetch("SELECT code, price_multiplier FROM regions")
    nodes = await db.fetch("SELECT id, region_code FROM nodes")
    return PriceBook.of(
        versions=versions,
        overrides=overrides,
        multipliers={r["code"]: r["price_multiplier"] for r in regions},
        node_regions={r["id"]: r["region_code"] for r in nodes},
    )


class PriceCache:
    """The current :class:`PriceBook`; ``invalidate()`` (the NOTIFY listener's callback)
    makes the next ``book()`` reload."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._book: PriceBook | None = None
        self._loaded_at = 0.0
        self._stale = True

    @property
    def stale(self) -> bool:
        """The next ``book()`` reloads (a notification arrived, or a reload failed)."""
        return self._stale

    def invalidate(self, *_: object) -> None:
        self._stale = True

    async def book(self, db: Source, *, node_ids: Iterable[str | None] = ()) -> PriceBook:
        """The book to price a batch with: reloaded first if stale, old, or missing one of
        ``node_ids``. Raises Unavailable only when there has never been a good book."""
        now = self._clock()
        book = self._book
        unknown = book is not None and any(
            n is not None and n not in book.node_regions for n in node_ids
        )
        due = now - self._loaded_at >= RELOAD_EVERY_S
        if (
            book is None
            or self._stale
            or due
            or (unknown and now - self._loaded_at >= NODES_EVERY_S)
        ):
            self._stale = False
            try:
                with postgres_errors():
                    book = await load_book(db)
            except Unavailable as exc:
                if self._book is None:
                    raise
                log.warning("price reload failed, keeping the last book: %s", exc)
                self._stale = True
                return self._book
            self._book, self._loaded_at = book, now
        assert book is not None
        return book


async def listen_forever(
    connect: Callable[[], Awaitable[asyncpg.Connection]],
    cache: PriceCache,
    *,
    check_every: float = LISTEN_CHECK_S,
) -> None:
    """LISTEN on ``channels.PRICES`` and invalidate ``cache`` on each notification; a dropped
    connection (Postgres restarted) is replaced, and the book reloaded for what was missed."""
    failures = 0
    while True:
        closed = asyncio.Event()
        try:
            with postgres_errors():
                conn = await connect()
                # named here: the caller's connect() is any connection (a command's name)
                await conn.execute("SELECT set_config('application_name', $1, false)", LISTEN_NAME)
                conn.add_termination_listener(lambda _, done=closed: done.set())
                await conn.add_listener(channels.PRICES, cache.invalidate)
        except Unavailable as exc:
            failures += 1
            log.warning("price notifications: cannot listen (retry %d): %s", failures, exc)
            await asyncio.sleep(min(5.0, 0.25 * 2**failures))
            continue
        failures = 0
        cache.invalidate()  # whatever changed while nobody listened
        try:
            # the termination callback, or the periodic check should it not come
            while not conn.is_closed():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closed.wait(), check_every)
            log.warning("price notifications: the listener connection dropped; reconnecting")
        finally:
            with contextlib.suppress(Exception):  # already closed by Postgres, or cancelled
                await conn.close()
