"""Follows Envoy's file access log and writes one usage_records row per billable request.

Durability: the file outlives a consumer outage (a gRPC access log would drop entries). A
batch of rows and the new read offset commit in one transaction; after a crash the batch is
read again and ``ON CONFLICT (request_id) DO NOTHING`` makes the replay harmless.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge

from crosslogic.billing import offsets
from crosslogic.billing.accesslog import end_time
from crosslogic.billing.batch import read as read_batch
from crosslogic.billing.offsets import Offset
from crosslogic.billing.price_store import PriceCache
from crosslogic.billing.request_metrics import RequestMetrics, costs
from crosslogic.billing.settlement import TokenSettler
from crosslogic.billing.usage_rows import insert_usage, priced
from crosslogic.contracts.journal import DEFAULT_GATEWAY
from crosslogic.errors import Unavailable
from crosslogic.journal.store import JournalStore

log = logging.getLogger(__name__)


class BillingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "crosslogic_billing_usage_records_total", "usage records written", registry=registry
        )
        self.abandoned = Counter(
            "crosslogic_billing_abandoned_requests_total",
            "usage records of requests whose client left before the response ended",
            ["endpoint", "streamed"],
            registry=registry,
        )
        self.malformed = Counter(
            "crosslogic_billing_malformed_entries_total",
            "access-log lines that could not be parsed",
            registry=registry,
        )
        self.errors = Counter(
            "crosslogic_billing_step_errors_total",
            "consumer steps that failed (Postgres down, ...) and will be retried",
            registry=registry,
        )
        # one billing process per log; "mostrecent": a restarted process's value, not the
        # last one a dead process left in the multiprocess directory
        self.lag = Gauge(
            "crosslogic_billing_access_log_lag_bytes",
            "bytes of access log not yet consumed (file size - committed offset)",
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.lag_seconds = Gauge(
            "crosslogic_billing_access_log_lag_seconds",
            "age of the oldest access-log line not yet consumed (0: caught up)",
            registry=registry,
            multiprocess_mode="mostrecent",
        )


# A step that takes longer than this is stuck (a Postgres that stopped answering without
# closing the connection): cancelled and retried, never waited on forever.
STEP_TIMEOUT_S = 60.0
RETRY_MAX_S = 5.0


class AccessLogConsumer:
    """Reads the access log from the committed offset and commits rows and offset together.

    ``committed`` is the last offset known to be committed (kept in memory, so the lag can be
    reported while Postgres is down); ``boots`` collects the Envoy boots the lines came from.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        path: Path,
        metrics: BillingMetrics,
        *,
        settler: TokenSettler | None = None,
        journal: JournalStore | None = None,
        prices: PriceCache | None = None,
        committed: Callable[[set[str]], None] | None = None,
        gateway: str = DEFAULT_GATEWAY,
        requests: RequestMetrics | None = None,
    ) -> None:
        self._pool = pool
        self._requests = requests  # the seed's request metrics, counted from each batch
        self.gateway = gateway  # whose log this is (GATEWAY_ID): its offset and boots
        self.prices = prices or PriceCache()
        self._committed = committed  # told the tenants of the rows each batch inserted
        self._settler = settler
        self._journal = journal
        self._path = path
        self._metrics = metrics
        self.committed: Offset | None = None
        self.boots: set[str] = set()
        # boot -> (inode, offset): a boot whose lines were followed by another boot's. Only
        # one Envoy writes the file at a time (no hot restart), so that boot is dead and
        # every line it wrote lies before the offset.
        self.superseded: dict[str, tuple[int, int]] = {}
        self._last_boot: str | None = None

    @property
    def path(self) -> Path:
        return self._path

    async def step(self) -> int:
        """Consume what is there now; returns the number of bytes consumed."""
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            return 0
        position = await offsets.committed(self._pool, self.gateway, self._path)
        if position is None or position.inode != stat.st_ino or position.offset > stat.st_size:
            # a new or truncated file: Envoy starts writing it from the beginning
            position = Offset(stat.st_ino, 0)
        self.committed = position
        if stat.st_size == position.offset:
            return 0
        data = await asyncio.to_thread(offsets.read_batch, self._path, position.offset)
        lines, consumed = offsets.split_complete(data)
        if consumed == 0:
            return 0
        batch = read_batch(lines, last_boot=self._last_boot)
        for entry in batch.malformed:
            self._metrics.malformed.inc()
            log.error(
                "skipping malformed access-log line: %s",
                entry,
                extra={"request_id": entry.request_id},
            )
        records = batch.records
        # the book is in memory: a query per batch at most (a reload), never one per row
        book = await self.prices.book(self._pool, node_ids={r.node_id for r in records})
        prices = [priced(r, book) for r in records]  # priced once: the rows and the metrics
        inserted: set[str] = set()
        after = Offset(position.inode, position.offset + consumed)
        async with self._pool.acquire() as conn, conn.transaction():
            if records:
                inserted = await insert_usage(conn, records, book, prices=prices)
            await offsets.commit(conn, self.gateway, self._path, after)
        self.committed = after
        self._last_boot = batch.last_boot
        fresh = batch.inserted(inserted)
        self._metrics.records.inc(len(fresh))
        if self._requests is not None:
            self._requests.answered(batch.outcomes)
            self._requests.billed(fresh, costs(records, prices))
        for record in fresh:
            if record.abandoned:
                streamed = "true" if record.streamed else "false"
                self._metrics.abandoned.labels(endpoint=record.endpoint, streamed=streamed).inc()
        if self._committed is not None and fresh:
            self._committed({r.tenant_id for r in fresh})
        seen = batch.seen
        self.boots.update(seen)
        for boot in batch.replaced:
            self.superseded.setdefault(boot, (position.inode, self.committed.offset))
        if self._settler is not None:
            # After the commit, and only for rows this step inserted: a replayed batch (crash
            # before the offset committed) inserts nothing and so settles nothing twice.
            await self._settler.settle(batch.due(inserted))
        if self._journal is not None and seen:
            # Every line consumed, billable or not, accounts for its request: its journal
            # entry is not needed any more. A failure only leaves entries that the journal's
            # reconciliation skips (their rows exist: ON CONFLICT DO NOTHING).
            try:
                await self._journal.forget(seen)
            except Unavailable as exc:
                log.warning("could not clear %d journal entries: %s", len(seen), exc)
        return consumed

    def observe(self, *, now: datetime | None = None) -> None:
        """Set the lag gauges from the file and the last committed offset: true even while
        Postgres is down (they are not a by-product of a successful step)."""
        committed = self.committed
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            self._metrics.lag.set(0)
            self._metrics.lag_seconds.set(0)
            return
        if committed is None:
            return  # the offset was never read: unknown, not zero
        offset = committed.offset if committed.inode == stat.st_ino else 0
        behind = max(0, stat.st_size - offset)
        self._metrics.lag.set(behind)
        if behind == 0:
            self._metrics.lag_seconds.set(0)
            return
        ended = end_time(offsets.first_line(self._path, offset))
        if ended is not None:
            moment = now or datetime.now(UTC)
            self._metrics.lag_seconds.set(max(0.0, (moment - ended).total_seconds()))

    async def run(self, *, idle_sleep: float = 0.25) -> None:
        failures = 0
        while True:
            try:
                consumed = await asyncio.wait_for(self.step(), STEP_TIMEOUT_S)
                failures = 0
            except Exception as exc:  # anything: logged, counted, retried; never silently fatal
                # Postgres down or restarted, a connection killed, a stuck query: the pool
                # reconnects on the next acquire; the file keeps every line meanwhile.
                failures += 1
                self._metrics.errors.inc()
                log.error("billing step failed (retry %d): %r", failures, exc)
                consumed = 0
                await asyncio.sleep(min(RETRY_MAX_S, 0.25 * 2**failures))
            if consumed == 0:
                await asyncio.sleep(idle_sleep)

    async def observe_forever(self, *, every: float = 1.0) -> None:
        while True:
            await asyncio.to_thread(self.observe)
            await asyncio.sleep(every)
