"""Billing the usage a killed Envoy never wrote to its access log, from the admission journal.

Billing learns which Envoy process is live from Envoy's admin ``/server_info`` (the boot id
is in the node metadata) and which processes wrote its log from the lines themselves; each
is recorded in ``envoy_boots``, under the consumer's gateway: every gateway's billing
reconciles the boots of its own Envoy and nothing else. A boot is superseded when another
one is live (the log's size at that moment bounds what it wrote) or when another boot's
lines follow its own in the log (the offset of that batch bounds it). Once the consumer's
committed offset passes it, what is left of that boot's journal becomes usage rows at the
estimate (journal/reconcile.py decides), exactly once (unique request_id), and the journal
is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable

import aiohttp
import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge

from crosslogic.billing import offsets
from crosslogic.billing.consumer import AccessLogConsumer
from crosslogic.billing.usage_rows import insert_usage
from crosslogic.contracts.journal import (
    BOOT_METADATA_KEY,
    DEFAULT_GATEWAY,
    GATEWAY_METADATA_KEY,
    valid_boot_id,
)
from crosslogic.errors import Unavailable
from crosslogic.journal.reconcile import DeadBoot, ready, recovered
from crosslogic.journal.store import JournalStore

log = logging.getLogger(__name__)

# /server_info is ~100 KB of JSON (every extension Envoy has): not every second
EVERY_S = 2.0


class RecoveryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.pending = Gauge(
            "crosslogic_usage_journal_pending",
            "admitted requests whose access-log line billing has not consumed yet",
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.recovered = Counter(
            "crosslogic_usage_journal_recovered_total",
            "usage rows billed at their estimate from a dead Envoy's journal",
            registry=registry,
        )


async def live_boot(session: aiohttp.ClientSession, url: str, gateway: str) -> str | None:
    """The boot id of the Envoy of ``gateway`` answering at ``url`` (its admin), or None if
    none answers. An Envoy of another gateway there is a misconfiguration, said in the log:
    taken for ours, it would make billing think our own Envoy dead."""
    try:
        async with session.get(f"{url}/server_info") as response:
            if response.status != 200:
                return None
            info = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    metadata = info.get("node", {}).get("metadata", {})
    boot = metadata.get(BOOT_METADATA_KEY)
    if metadata.get(GATEWAY_METADATA_KEY, DEFAULT_GATEWAY) != gateway:
        log.error(
            "the Envoy at %s belongs to gateway %r, not to this billing's GATEWAY_ID=%s: "
            "check ENVOY_ADMIN_HOST/ENVOY_ADMIN_PORT",
            url,
            metadata.get(GATEWAY_METADATA_KEY),
            gateway,
        )
        return None
    return boot if isinstance(boot, str) and valid_boot_id(boot) else None


class JournalReconciler:
    def __init__(
        self,
        pool: asyncpg.Pool,
        consumer: AccessLogConsumer,
        journal: JournalStore,
        metrics: RecoveryMetrics,
        *,
        live: Callable[[], Awaitable[str | None]],
    ) -> None:
        self._pool = pool
        self._consumer = consumer
        self._journal = journal
        self._metrics = metrics
        self._live = live
        self._path = str(consumer.path)
        self._gateway = consumer.gateway

    async def step(self) -> int:
        """Learn boots, mark superseded ones, reconcile those that are ready; returns the
        number of usage rows recovered."""
        live = await self._live()
        known = set(self._consumer.boots) | ({live} if live else set())
        with contextlib.suppress(Unavailable):  # Redis down: the next step asks again
            known |= await self._journal.boots(self._gateway)
        if known:
            await self._pool.execute(
                "INSERT INTO envoy_boots (boot_id, access_log, gateway) "
                "SELECT unnest($1::text[]), $2, $3 ON CONFLICT (boot_id) DO NOTHING",
                sorted(known),
                self._path,
                self._gateway,
            )
            self._consumer.boots.difference_update(known)
        for replaced, (inode, size) in list(self._consumer.superseded.items()):
            # seen in the log itself: another boot's lines followed this one's
            await self._pool.execute(
                "UPDATE envoy_boots SET superseded_at = now(), log_inode = $2, log_size = $3 "
                "WHERE boot_id = $1 AND superseded_at IS NULL",
                replaced,
                inode,
                size,
            )
            del self._consumer.superseded[replaced]
        if live is not None:
            # After the live boot answered: the file cannot grow any more from older boots,
            # so its size now bounds what they wrote.
            inode, size = _stat(self._path)
            await self._pool.execute(
                "UPDATE envoy_boots SET superseded_at = now(), log_inode = $4, log_size = $5 "
                "WHERE gateway = $1 AND access_log = $2 AND boot_id <> $3 "
                "AND superseded_at IS NULL",
                self._gateway,
                self._path,
                live,
                inode,
                size,
            )
        rows = await self._pool.fetch(
            "SELECT boot_id, superseded_at IS NOT NULL AS dead, log_inode, log_size "
            "FROM envoy_boots WHERE gateway = $1 AND access_log = $2 AND reconciled_at IS NULL",
            self._gateway,
            self._path,
        )
        committed = await offsets.committed(self._pool, self._gateway, self._path)
        # Redis down: the gauge keeps its last value; reconciliation below waits for Redis
        with contextlib.suppress(Unavailable):
            self._metrics.pending.set(await self._journal.pending([r["boot_id"] for r in rows]))
        total = 0
        for row in rows:
            if not row["dead"]:
                continue
            dead = DeadBoot(row["boot_id"], row["log_inode"], row["log_size"])
            if ready(dead, committed):
                total += await self._reconcile(dead.boot_id)
        return total

    async def _reconcile(self, boot: str) -> int:
        records, bad = recovered(await self._journal.entries(boot))
        inserted: set[str] = set()
        if records:
            async with self._pool.acquire() as conn, conn.transaction():
                # priced with the consumer's book: one set of rules for both writers
                book = await self._consumer.prices.book(conn, node_ids={r.node_id for r in records})
                inserted = await insert_usage(conn, records, book)
        for request_id in bad:
            log.error(
                "journal of boot %s: unreadable entry for %s",
                boot,
                request_id,
                extra={"request_id": request_id},
            )
        await self._journal.drop(boot, self._gateway)
        await self._pool.execute(
            "UPDATE envoy_boots SET reconciled_at = now(), recovered = $2 WHERE boot_id = $1",
            boot,
            len(inserted),
        )
        self._metrics.recovered.inc(len(inserted))
        if inserted:
            log.warning(
                "Envoy boot %s died before logging %d request(s): billed at their estimate",
                boot,
                len(inserted),
            )
        return len(inserted)

    async def run(self, *, every: float = EVERY_S) -> None:
        while True:
            try:
                await asyncio.wait_for(self.step(), 60.0)
            except Exception as exc:  # anything: logged and retried, never silently fatal
                log.error("journal reconciliation failed, retrying: %r", exc)
            await asyncio.sleep(every)


def _stat(path: str) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return 0, 0
    return stat.st_ino, stat.st_size
