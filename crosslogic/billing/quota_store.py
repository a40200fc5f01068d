"""Quota state in PostgreSQL: computed from grants, usage and plan, stored on the tenant.

``recompute`` locks the tenant row, applies :func:`crosslogic.billing.quota.exhaustion` and,
only when the answer changes, writes ``tenants.quota_exhausted_at``/``quota_reason`` and
NOTIFYs ``crosslogic_keys`` (kind ``tenant``) in the same transaction: every ext_authz process
then drops the tenant's cached keys and reads the new state with the next request's key
lookup. The request path itself never queries for quota.

:class:`QuotaKeeper` is billing's loop: it recomputes the tenants whose usage rows were just
committed (within a fraction of a second) and sweeps every tenant that quota can concern
every ``sweep_every`` seconds (grants expiring, a new month renewing allowances, rows
written by the journal's recovery).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Counter

from crosslogic.accounts.records import announce
from crosslogic.billing import quota
from crosslogic.billing.quota import Account, Allowance, Grant, MonthUsage, Usage
from crosslogic.db.errors import postgres_errors
from crosslogic.errors import NotFound, Unavailable

log = logging.getLogger(__name__)

_TENANT = """
SELECT t.id::text AS id, t.plan, t.billing_mode, t.stripe_customer_id IS NOT NULL AS stripe,
       t.monthly_spend_cap_usd, t.quota_reason, t.quota_exhausted_at,
       p.billing_mode AS plan_mode, p.monthly_allowance_tokens, p.monthly_allowance_usd
FROM tenants t LEFT JOIN plans p ON p.name = t.plan
WHERE t.id = $1
"""
_GRANTS = """
SELECT amount_usd, granted_at, expires_at FROM credit_grants
WHERE tenant_id = $1 AND granted_at <= $2 AND (expires_at IS NULL OR expires_at > $2)
"""
# one pass over the tenant's rows from the first month that matters, less what reserved
# capacity covered (known once the hour is aggregated: until then quota errs on refusing)
_MONTHS = """
WITH usage AS (
    SELECT started_at AS at, total_tokens AS tokens, cost_usd AS cost
    FROM usage_records WHERE tenant_id = $1 AND started_at >= $2
    UNION ALL
    SELECT hour, -(covered_prompt_tokens + covered_completion_tokens), -covered_cost_usd
    FROM reserved_usage WHERE tenant_id = $1 AND hour >= $2
)
SELECT date_trunc('month', at, 'UTC') AS month,
       coalesce(sum(tokens), 0)::bigint AS tokens,
       coalesce(sum(cost), 0) AS cost,
       coalesce(sum(tokens) FILTER (WHERE at < $3), 0)::bigint AS tokens_before,
       coalesce(sum(cost) FILTER (WHERE at < $3), 0) AS cost_before
FROM usage
GROUP BY 1
"""
# tenants quota can concern: refused now, capped, or prepaid
_CANDIDATES = """
SELECT t.id::text FROM tenants t LEFT JOIN plans p ON p.name = t.plan
WHERE t.quota_reason IS NOT NULL OR t.monthly_spend_cap_usd IS NOT NULL
   OR t.billing_mode = 'prepaid'
   OR (t.billing_mode IS NULL AND t.stripe_customer_id IS NULL AND p.billing_mode = 'prepaid')
"""


async def load_account(
    conn: asyncpg.Connection,
    tenant_id: str,
    *,
    now: datetime,
    lock: bool = False,
    usage: bool = False,
) -> tuple[Account, dict[str, Any]]:
    """The tenant's account and its row (NotFound if there is no such tenant); its usage is
    read only when quota can refuse it, or with ``usage``."""
    row = await conn.fetchrow(_TENANT + (" FOR UPDATE OF t" if lock else ""), tenant_id)
    if row is None:
        raise NotFound("tenant", tenant_id)
    mode = quota.effective_mode(
        tenant_mode=row["billing_mode"], plan_mode=row["plan_mode"], stripe_customer=row["stripe"]
    )
    grants = tuple(
        Grant(r["amount_usd"], r["granted_at"], r["expires_at"])
        for r in await conn.fetch(_GRANTS, tenant_id, now)
    )
    start = quota.since(grants, now=now)
    current = quota.month_start(now)
    first = min(current, quota.month_start(start)) if start is not None else current
    months: tuple[MonthUsage, ...] = ()
    # a postpaid tenant without a cap is never refused: its usage is not read (billing marks
    # every tenant with new rows, the busiest ones included)
    if usage or mode == quota.PREPAID or row["monthly_spend_cap_usd"] is not None:
        months = tuple(
            MonthUsage(
                month=r["month"],
                total=Usage(r["tokens"], r["cost"]),
                before_since=Usage(r["tokens_before"], r["cost_before"]),
            )
            for r in await conn.fetch(_MONTHS, tenant_id, first, start or first)
        )
    account = Account(
        mode=mode,
        allowance=Allowance(
            tokens=row["monthly_allowance_tokens"], usd=row["monthly_allowance_usd"]
        ),
        grants=grants,
        months=months,
        spend_cap=row["monthly_spend_cap_usd"],
    )
    return account, dict(row)


async def recompute(
    conn: asyncpg.Connection, tenant_id: str, *, now: datetime
) -> tuple[str | None, str | None]:
    """Store the tenant's quota state if it changed (run inside a transaction): the refusal
    reason (None: not refused) before and after."""
    account, row = await load_account(conn, tenant_id, now=now, lock=True)
    reason = quota.exhaustion(account, now=now)
    if reason == row["quota_reason"]:
        return reason, reason
    await conn.execute(
        "UPDATE tenants SET quota_reason = $2, quota_exhausted_at = $3 WHERE id = $1",
        tenant_id,
        reason,
        None if reason is None else now,
    )
    await announce(conn, "tenant", tenant_id)
    log.info("tenant %s quota: %s -> %s", tenant_id, row["quota_reason"] or "ok", reason or "ok")
    return row["quota_reason"], reason


async def state(conn: asyncpg.Connection, tenant_id: str) -> dict[str, Any]:
    """The tenant's balance and quota, as the admin API and the command line show them."""
    now = datetime.now(UTC)
    account, row = await load_account(conn, tenant_id, now=now, usage=True)
    month = quota.this_month(account.months, now=now)
    allowance = account.allowance
    exhausted = row["quota_exhausted_at"]
    return {
        "tenant_id": row["id"],
        "plan": row["plan"],
        "billing_mode": account.mode,
        "balance_usd": str(quota.balance(account, now=now)),
        "credits_usd": str(sum((g.amount for g in account.grants), quota.ZERO)),
        "month_tokens": month.tokens,
        "month_cost_usd": str(month.cost),
        "month_chargeable_usd": str(quota.chargeable(month, allowance)),
        "monthly_allowance_tokens": allowance.tokens,
        "monthly_allowance_usd": None if allowance.usd is None else str(allowance.usd),
        "monthly_spend_cap_usd": None if account.spend_cap is None else str(account.spend_cap),
        "quota_reason": row["quota_reason"],
        "quota_exhausted_at": None if exhausted is None else exhausted.isoformat(),
        # what the next recompute will store: may differ for a moment after new usage
        "refused_now": quota.exhaustion(account, now=now),
    }


class QuotaKeeper:
    """Recomputes the quota of tenants with new usage (``mark``), and sweeps the rest."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        registry: CollectorRegistry,
        *,
        every: float = 0.25,
        sweep_every: float = 30.0,
    ) -> None:
        self._pool = pool
        self._every = every
        self._sweep_every = sweep_every
        self._dirty: set[str] = set()
        self._flips = Counter(
            "crosslogic_billing_quota_changes_total",
            "tenants whose quota state changed (to: the refusal reason, or ok)",
            ["to"],
            registry=registry,
        )
        self._errors = Counter(
            "crosslogic_billing_quota_errors_total",
            "quota recomputations that failed (Postgres down) and will be retried",
            registry=registry,
        )

    def mark(self, tenants: Iterable[str]) -> None:
        """Tenants whose usage rows just committed: recomputed on the next turn."""
        self._dirty.update(tenants)

    async def step(self, *, sweep: bool) -> None:
        if sweep:
            with postgres_errors():
                rows = await self._pool.fetch(_CANDIDATES)
            self._dirty.update(r["id"] for r in rows)
        while self._dirty:
            tenant_id = self._dirty.pop()
            try:
                with postgres_errors():
                    async with self._pool.acquire() as conn, conn.transaction():
                        before, after = await recompute(conn, tenant_id, now=datetime.now(UTC))
            except Unavailable:
                self._dirty.add(tenant_id)
                raise
            except NotFound:
                continue
            if after != before:
                self._flips.labels(after or "ok").inc()

    async def run(self) -> None:
        last_sweep = float("-inf")
        while True:
            sweep = time.monotonic() - last_sweep >= self._sweep_every
            try:
                await self.step(sweep=sweep)
                if sweep:
                    last_sweep = time.monotonic()
            except Unavailable as exc:
                self._errors.inc()
                log.warning("quota recomputation failed, retrying: %s", exc)
                await asyncio.sleep(1.0)
            await asyncio.sleep(self._every)
