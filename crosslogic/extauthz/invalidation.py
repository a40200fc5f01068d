"""Keeping each ext_authz process's caches honest without a database read per request.

The model catalog (with each model's strategy) and the regions are re-read every few
seconds; a failed read keeps the last good one. Key changes arrive by LISTEN on the channel
the account operations NOTIFY (milliseconds after the change commits). A dropped listener
connection may have missed notifications, so every (re)connect clears the cache. Key usage
goes back to Postgres in one batched UPDATE.
"""

from __future__ import annotations

import asyncio
import json
import logging

import asyncpg

from crosslogic.contracts import channels
from crosslogic.db.budget import application_name, listen_name
from crosslogic.db.connection import connect
from crosslogic.db.errors import postgres_errors
from crosslogic.errors import Unavailable
from crosslogic.extauthz.authorizer import Authorizer
from crosslogic.extauthz.store import KeyCache, PostgresKeys
from crosslogic.settings import Settings

log = logging.getLogger(__name__)

LISTEN_NAME = listen_name(application_name("extauthz"))


def apply(cache: KeyCache, payload: str) -> None:
    try:
        change = json.loads(payload)
        kind, ident = str(change["kind"]), str(change["id"])
    except (ValueError, KeyError, TypeError):
        log.warning("unreadable change notification %r: clearing the key cache", payload)
        cache.clear()
        return
    dropped = cache.invalidate(kind=kind, ident=ident)
    log.info("%s %s changed: dropped %d cached key(s)", kind, ident, dropped)


async def follow_changes(settings: Settings, cache: KeyCache, *, probe_every: float = 1.0) -> None:
    while True:
        conn: asyncpg.Connection | None = None
        try:
            conn = await connect(settings, application_name=LISTEN_NAME)
            with postgres_errors():
                await conn.add_listener(
                    channels.KEYS, lambda _c, _pid, _ch, payload: apply(cache, payload)
                )
                cache.clear()  # whatever changed while nobody was listening
                while True:  # a dead connection delivers nothing: notice it
                    await asyncio.sleep(probe_every)
                    await conn.fetchval("SELECT 1")
        except Unavailable as exc:
            log.warning("change listener lost its database connection, retrying: %s", exc)
        finally:
            if conn is not None and not conn.is_closed():
                conn.terminate()
        await asyncio.sleep(1.0)


async def flush_last_used(cache: KeyCache, store: PostgresKeys, *, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        used = cache.take_used()
        try:
            await store.record_last_used(used)
        except Unavailable as exc:
            log.warning("could not record last use of %d key(s): %s", len(used), exc)
            for api_key_id, at in used.items():  # keep them for the next flush
                cache.touch(api_key_id, at=at)


async def refresh_catalog(service: Authorizer, store: PostgresKeys, *, every: float) -> None:
    """Keep the model catalog and the regions current; a failed refresh keeps the last good
    ones."""
    while True:
        try:
            service.catalog = await store.fetch_catalog()
            service.regions = await store.fetch_regions()
        except Unavailable as exc:
            log.warning("model catalog refresh failed, keeping the last one: %s", exc)
        await asyncio.sleep(every)
