"""Credits: every tenant's stored quota state against what quota computes now, and the
credit grants themselves.

Billing stores ``tenants.quota_reason`` after each committed batch of usage rows (within a
second) and on a 30 s sweep (a month starting, a grant expiring, rows the journal's
recovery wrote); a grant or a change of plan, mode or cap recomputes in its own transaction.
So a stored state that disagrees with the recompute is *pending* when one of the sweep's
causes happened within ``QUOTA_GRACE`` (two sweeps) of the snapshot: the tenant's newest
usage row, a grant given or expiring, or the month's start. Any other disagreement is a
difference (``stale``): billing's quota loop is not running, or the state was written by
hand. Both sides use the snapshot's ``now()``; the window of hours does not apply (quota is
the present state).

A grant's amount is NOT NULL and positive by the schema; a NULL or negative one (a dropped
constraint, a hand-made row) is a difference, and its tenant's quota is not recomputed
(the balance would be meaningless).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from crosslogic.billing import quota
from crosslogic.billing.quota_store import load_account
from crosslogic.billing.reconcile.findings import Difference, Window, text

QUOTA_GRACE = timedelta(seconds=60)
STALE = "stale"
RECOMPUTE_PENDING = "recompute_pending"
NEGATIVE_AMOUNT = "negative_amount"
NULL_AMOUNT = "null_amount"

_BAD_GRANT = "(g.amount_usd IS NULL OR g.amount_usd < 0)"
# the tenants quota can concern (as billing's sweep picks them): refused now, capped, or
# prepaid; any other is postpaid without a cap, never refused, and stored as such
_CANDIDATES = f"""
SELECT t.id::text AS id FROM tenants t LEFT JOIN plans p ON p.name = t.plan
WHERE (t.quota_reason IS NOT NULL OR t.monthly_spend_cap_usd IS NOT NULL
       OR t.billing_mode = 'prepaid'
       OR (t.billing_mode IS NULL AND t.stripe_customer_id IS NULL
           AND p.billing_mode = 'prepaid'))
  AND NOT EXISTS (SELECT 1 FROM credit_grants g WHERE g.tenant_id = t.id AND {_BAD_GRANT})
ORDER BY t.id
"""
# $1 tenant, $2 now, $3 the grace: something the sweep (not a transaction) picks up
_RECENT_CAUSE = """
SELECT $2 - date_trunc('month', $2, 'UTC') < $3
    OR EXISTS (SELECT 1 FROM usage_records WHERE tenant_id = $1 AND recorded_at > $2 - $3)
    OR EXISTS (SELECT 1 FROM credit_grants
               WHERE tenant_id = $1 AND (granted_at BETWEEN $2 - $3 AND $2
                                         OR expires_at BETWEEN $2 - $3 AND $2))
"""
_BAD_GRANTS = f"""
SELECT g.id, g.tenant_id::text AS tenant_id, g.amount_usd FROM credit_grants g
WHERE {_BAD_GRANT} ORDER BY g.id
"""


def _shown(reason: str | None) -> str:
    return reason or "ok"


async def quota_state(conn: asyncpg.Connection, window: Window) -> list[Difference]:
    """Every tenant whose stored quota reason is not what quota computes now."""
    now: datetime = await conn.fetchval("SELECT now()")  # the snapshot's moment
    differences = []
    for candidate in await conn.fetch(_CANDIDATES):
        tenant_id = candidate["id"]
        account, row = await load_account(conn, tenant_id, now=now)
        computed = quota.exhaustion(account, now=now)
        if computed == row["quota_reason"]:
            continue
        pending = bool(await conn.fetchval(_RECENT_CAUSE, tenant_id, now, QUOTA_GRACE))
        differences.append(
            Difference(
                "quota",
                {"tenant_id": tenant_id},
                "quota_reason",
                _shown(computed),
                _shown(row["quota_reason"]),
                reason=RECOMPUTE_PENDING if pending else STALE,
                pending=pending,
            )
        )
    return differences


async def credit_grants(conn: asyncpg.Connection, window: Window) -> list[Difference]:
    """Every credit grant whose amount is NULL or negative."""
    return [
        Difference(
            "credit_grants",
            {"tenant_id": row["tenant_id"], "grant_id": row["id"]},
            "amount_usd",
            ">= 0",
            text(row["amount_usd"]) or "NULL",
            reason=NULL_AMOUNT if row["amount_usd"] is None else NEGATIVE_AMOUNT,
        )
        for row in await conn.fetch(_BAD_GRANTS)
    ]
