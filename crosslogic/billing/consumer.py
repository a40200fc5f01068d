"""Follows Envoy's file access log and writes one usage_records row per billable request.

Durability: the file outlives a consumer outage (a gRPC access log would drop entries). A
batch of rows and the new read offset commit in one transaction; after a crash the batch is
read again and ``ON CONFLICT (request_id) DO NOTHING`` makes the replay harmless.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge

from crosslogic.billing.accesslog import MalformedEntry, Settlement, UsageRecord, parse
from crosslogic.billing.pricing import FREE, Price
from crosslogic.billing.settlement import TokenSettler

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 4 * 1024 * 1024

_INSERT = """
INSERT INTO usage_records (request_id, tenant_id, environment_id, api_key_id, model_id, node_id,
    endpoint, streamed, prompt_tokens, completion_tokens, cost_usd, status_code, response_flags,
    started_at, duration_ms, usage_estimated)
SELECT * FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::uuid[], $5::int[], $6::text[],
    $7::text[], $8::bool[], $9::int[], $10::int[], $11::numeric[], $12::int[], $13::text[],
    $14::timestamptz[], $15::int[], $16::bool[])
ON CONFLICT (request_id) DO NOTHING
RETURNING request_id
"""


class BillingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "crosslogic_billing_usage_records_total", "usage records written", registry=registry
        )
        self.malformed = Counter(
            "crosslogic_billing_malformed_entries_total",
            "access-log lines that could not be parsed",
            registry=registry,
        )
        self.lag = Gauge(
            "crosslogic_billing_access_log_lag_bytes",
            "bytes of access log not yet consumed",
            registry=registry,
            multiprocess_mode="max",
        )


@dataclass
class Position:
    inode: int
    offset: int


def split_complete(data: bytes) -> tuple[list[bytes], int]:
    """Whole lines of data and the bytes they span; a partial last line waits for more."""
    end = data.rfind(b"\n")
    if end < 0:
        return [], 0
    return [line for line in data[: end + 1].split(b"\n") if line.strip()], end + 1


class AccessLogConsumer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        path: Path,
        metrics: BillingMetrics,
        *,
        settler: TokenSettler | None = None,
    ) -> None:
        self._pool = pool
        self._settler = settler
        self._path = path
        self._metrics = metrics

    async def _position(self) -> Position | None:
        row = await self._pool.fetchrow(
            'SELECT inode, "offset" FROM access_log_offsets WHERE path = $1', str(self._path)
        )
        return Position(row["inode"], row["offset"]) if row else None

    async def _prices(self) -> dict[int, Price]:
        rows = await self._pool.fetch(
            "SELECT id, input_price_per_mtok, output_price_per_mtok FROM models"
        )
        return {r["id"]: Price(r["input_price_per_mtok"], r["output_price_per_mtok"]) for r in rows}

    async def step(self) -> int:
        """Consume what is there now; returns the number of bytes consumed."""
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            return 0
        position = await self._position()
        if position is None or position.inode != stat.st_ino or position.offset > stat.st_size:
            # a new or truncated file: Envoy starts writing it from the beginning
            position = Position(stat.st_ino, 0)
        self._metrics.lag.set(stat.st_size - position.offset)
        if stat.st_size == position.offset:
            return 0
        data = await asyncio.to_thread(_read, self._path, position.offset)
        lines, consumed = split_complete(data)
        if consumed == 0:
            return 0
        records: list[UsageRecord] = []
        settlements: list[Settlement] = []
        for line in lines:
            try:
                record, settle = parse(line)
            except MalformedEntry as exc:
                self._metrics.malformed.inc()
                log.error("skipping malformed access-log line: %s", exc)
                continue
            if record is not None:
                records.append(record)
            if settle is not None:
                settlements.append(settle)
        prices = await self._prices() if records else {}
        inserted: set[str] = set()
        async with self._pool.acquire() as conn, conn.transaction():
            if records:
                rows = await conn.fetch(_INSERT, *columns(records, prices))
                inserted = {r["request_id"] for r in rows}
            await conn.execute(
                'INSERT INTO access_log_offsets (path, inode, "offset") VALUES ($1, $2, $3) '
                'ON CONFLICT (path) DO UPDATE SET inode = $2, "offset" = $3, updated_at = now()',
                str(self._path),
                position.inode,
                position.offset + consumed,
            )
        self._metrics.records.inc(len(inserted))
        if self._settler is not None:
            # After the commit, and only for rows this step inserted: a replayed batch (crash
            # before the offset committed) inserts nothing and so settles nothing twice.
            billable = {r.request_id for r in records}
            await self._settler.settle(
                [s for s in settlements if s.request_id in inserted or s.request_id not in billable]
            )
        return consumed

    async def run(self, *, idle_sleep: float = 0.25) -> None:
        while True:
            try:
                consumed = await self.step()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.error("billing step failed, retrying: %s", exc)
                consumed = 0
                await asyncio.sleep(1.0)
            if consumed == 0:
                await asyncio.sleep(idle_sleep)


def _read(path: Path, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(MAX_BATCH_BYTES)


def columns(records: Sequence[UsageRecord], prices: dict[int, Price]) -> list[list[object]]:
    def cost(r: UsageRecord) -> Decimal:
        return prices.get(r.model_id, FREE).cost(
            prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens
        )

    return [
        [r.request_id for r in records],
        [r.tenant_id for r in records],
        [r.environment_id for r in records],
        [r.api_key_id for r in records],
        [r.model_id for r in records],
        [r.node_id for r in records],
        [r.endpoint for r in records],
        [r.streamed for r in records],
        [r.prompt_tokens for r in records],
        [r.completion_tokens for r in records],
        [cost(r) for r in records],
        [r.status_code for r in records],
        [r.response_flags for r in records],
        [r.started_at for r in records],
        [r.duration_ms for r in records],
        [r.usage_estimated for r in records],
    ]
