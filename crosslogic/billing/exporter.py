"""The Stripe export run: plan the events that bring Stripe up to ``usage_hourly``, then
send every due one, recording each attempt and Stripe's answer.

One run at a time holds PostgreSQL's advisory lock (the billing service's loop every
BILLING_EXPORT_INTERVAL, or ``crosslogic billing export`` from cron); a second one skips.
Planning commits before anything is sent, so what a crash interrupts is sent by the next
run under the same identifiers. A failed event waits (doubling, at most an hour) before it
is tried again; Stripe unreachable ends the run's sending early. Nothing here blocks the
aggregation: it only reads ``usage_hourly``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge

from crosslogic.billing import export_store as store
from crosslogic.billing.export_store import DueEvent
from crosslogic.billing.stripe_export import (
    FEE,
    LOOKBACK,
    METERS,
    MeterNames,
    cents,
    fee_description,
    payload,
    plan,
    plan_fees,
    retry_delay,
)
from crosslogic.billing.stripe_meter import Answer, InvoiceItem, MeterEvent, MeterEvents
from crosslogic.db.errors import postgres_errors
from crosslogic.errors import Unavailable
from crosslogic.settings import Settings

log = logging.getLogger(__name__)


def meter_names(settings: Settings) -> MeterNames:
    return MeterNames(
        prompt_tokens=settings.stripe_meter_prompt_tokens,
        completion_tokens=settings.stripe_meter_completion_tokens,
    )


class ExportMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.exported = Counter(
            "billing_usage_exported_total",
            "tokens sent to Stripe as meter events (accepted by Stripe), by meter "
            "(reservation_fee: reservation fees sent as invoice items, counted one each)",
            ["meter"],
            registry=registry,
        )
        self.failures = Counter(
            "crosslogic_billing_export_failures_total",
            "meter event attempts that failed (reason: unreachable or refused); retried later",
            ["reason"],
            registry=registry,
        )
        self.oldest = Gauge(
            "crosslogic_billing_oldest_unexported_hour_seconds",
            "age of the oldest hour with usage not yet in Stripe (0: all exported)",
            registry=registry,
            multiprocess_mode="mostrecent",
        )

    def present(self) -> None:
        """Every series at 0 before the first export (or with the export off): alerts and
        dashboards see a value, not an absent series."""
        for meter in (*METERS, FEE):
            self.exported.labels(meter)
        for reason in ("unreachable", "refused"):
            self.failures.labels(reason)
        self.oldest.set(0)  # nothing known to wait until the first run says otherwise


@dataclass(frozen=True)
class ExportResult:
    """What one run did. ``failed``: attempts that failed (their events wait for a retry);
    ``stopped``: Stripe was unreachable, so the run stopped sending."""

    planned: int = 0
    sent: int = 0
    failed: int = 0
    overbilled: int = 0
    stopped: bool = False
    oldest_unexported_hour: datetime | None = None

    def as_json(self) -> dict[str, object]:
        out = asdict(self)
        hour = self.oldest_unexported_hour
        out["oldest_unexported_hour"] = None if hour is None else hour.isoformat()
        return out


# a connection for one run: a pool's ``acquire`` in the service, a fresh one from the CLI
Acquire = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]


class StripeExporter:
    """Exports ``usage_hourly`` to ``events`` (Stripe). ``now`` is injected for tests."""

    def __init__(
        self,
        acquire: Acquire,
        events: MeterEvents,
        metrics: ExportMetrics,
        *,
        names: MeterNames,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        batch: int = 500,
    ) -> None:
        self._acquire = acquire
        self._events = events
        self._metrics = metrics
        self._names = names
        self._now = now
        self._batch = batch

    async def export_once(self) -> ExportResult | None:
        """One run; None if another run holds the lock. Raises Unavailable (PostgreSQL)."""
        with postgres_errors():
            async with self._acquire() as conn:
                if not await store.try_lock(conn):
                    return None
                try:
                    return await self._locked(conn)
                finally:
                    if not conn.is_closed():
                        await store.unlock(conn)

    async def run_forever(self, interval: float) -> None:
        """A run every ``interval`` seconds; PostgreSQL away is logged and tried next time."""
        while True:
            try:
                result = await self.export_once()
            except Unavailable as exc:
                log.warning("stripe export: %s; trying again in %.0fs", exc.message, interval)
            else:
                if result is None:
                    log.info("stripe export: another export is running; skipped")
                elif result.planned or result.sent or result.failed:
                    log.info("stripe export: %s", result.as_json())
            await asyncio.sleep(interval)

    async def _locked(self, conn: asyncpg.Connection) -> ExportResult:
        now = self._now()
        async with conn.transaction():
            totals = await store.hour_totals(conn, since=now - LOOKBACK)
            planned, over = plan(totals, self._names)
            planned += plan_fees(await store.reservation_fees(conn, now=now))
            await store.record_planned(conn, planned, now=now)
        for o in over:
            log.warning(
                "stripe export: tenant %s hour %s model %s %s: %d exported, total now %d; "
                "needs a meter event adjustment",
                o.tenant_id,
                o.hour.isoformat(),
                o.model_id,
                o.meter,
                o.exported,
                o.total,
            )
        sent, failed, stopped = await self._send_due(conn)
        oldest = await store.oldest_unexported(conn)
        age = 0.0 if oldest is None else max((self._now() - oldest).total_seconds(), 0.0)
        self._metrics.oldest.set(age)
        return ExportResult(len(planned), sent, failed, len(over), stopped, oldest)

    async def _send_due(self, conn: asyncpg.Connection) -> tuple[int, int, bool]:
        sent = failed = 0
        tried: set[int] = set()
        while True:
            due = [
                e
                for e in await store.due_events(conn, now=self._now(), limit=self._batch)
                if e.id not in tried
            ]
            if not due:
                return sent, failed, False
            for event in due:
                tried.add(event.id)
                answer = await self._send(event)
                now = self._now()
                await store.record_attempt(
                    conn,
                    event,
                    answer,
                    now=now,
                    next_attempt_at=now + retry_delay(event.attempts + 1),
                )
                if answer.sent:
                    sent += 1
                    self._metrics.exported.labels(event.meter).inc(event.quantity)
                    continue
                failed += 1
                self._count_failure(event.identifier, answer)
                if answer.unreachable:
                    return sent, failed, True

    async def _send(self, event: DueEvent) -> Answer:
        if event.fee is not None and event.amount_usd is not None:
            return await self._events.send_invoice_item(
                InvoiceItem(
                    identifier=event.identifier,
                    customer=event.stripe_customer_id,
                    amount_cents=cents(event.amount_usd),
                    description=fee_description(
                        model=event.model,
                        region=event.fee.region,
                        tokens_per_minute=event.fee.tokens_per_minute,
                        starts_at=event.fee.starts_at,
                        ends_at=event.fee.ends_at,
                    ),
                    period_start=event.fee.starts_at,
                    period_end=event.fee.ends_at,
                    metadata={"reservation_id": str(event.reservation_id)},
                )
            )
        return await self._events.send(
            MeterEvent(
                event_name=event.event_name,
                identifier=event.identifier,
                timestamp=event.hour,
                payload=payload(
                    stripe_customer_id=event.stripe_customer_id,
                    quantity=event.quantity,
                    model=event.model,
                ),
            )
        )

    def _count_failure(self, identifier: str, answer: Answer) -> None:
        reason = "unreachable" if answer.unreachable else "refused"
        self._metrics.failures.labels(reason).inc()
        log.warning("stripe export: event %s %s: %s", identifier, reason, answer.error)
