"""Reserved capacity: each reserved hour's stored coverage against a recompute from its usage
rows (``reserved_usage``), and each started reservation's fee against what Stripe accepted
(``reservation_fees``).

Hours marked for aggregation are left out of the first (the next run rewrites them). A fee
not sent yet is pending: the export sends it on its next run, retrying until Stripe takes it.
"""

from __future__ import annotations

from datetime import UTC

import asyncpg

from crosslogic.billing.reconcile.findings import Difference, Window, text
from crosslogic.billing.reservations import Coverage
from crosslogic.billing.reserved_hours import COLUMNS, computed

_STORED = f"""
SELECT reservation_id, hour, {", ".join(COLUMNS)} FROM reserved_usage
WHERE ($1::timestamptz IS NULL OR hour >= $1) AND ($2::timestamptz IS NULL OR hour < $2)
"""
# $1, $2: the window. Started reservations with a fee, of tenants with a Stripe customer.
_FEES = """
SELECT r.id, r.tenant_id::text AS tenant_id, r.starts_at, r.fee_usd,
       b.amount_usd AS sent_usd, b.status
FROM reservations r
JOIN tenants t ON t.id = r.tenant_id
LEFT JOIN billing_events b ON b.reservation_id = r.id
WHERE r.starts_at <= now() AND r.fee_usd > 0 AND coalesce(t.stripe_customer_id, '') <> ''
  AND ($1::timestamptz IS NULL OR r.starts_at >= $1)
  AND ($2::timestamptz IS NULL OR r.starts_at < $2)
ORDER BY r.starts_at, r.id
"""


async def reserved_usage(conn: asyncpg.Connection, window: Window) -> list[Difference]:
    dirty = {r["hour"] for r in await conn.fetch("SELECT hour FROM usage_hours_dirty")}
    expected = {
        (h.reservation_id, h.hour): h.coverage
        for h in await computed(conn, window.start, window.end)
    }
    stored = {
        (r["reservation_id"], r["hour"]): Coverage(*(r[c] for c in COLUMNS))
        for r in await conn.fetch(_STORED, window.start, window.end)
    }
    differences = []
    for at in sorted(expected.keys() | stored.keys()):
        if at[1] in dirty:
            continue
        want, have = expected.get(at), stored.get(at)
        subject = {"reservation_id": at[0], "hour": at[1].astimezone(UTC).isoformat()}
        for column, field in zip(COLUMNS, Coverage.__dataclass_fields__, strict=True):
            a = None if want is None else getattr(want, field)
            b = None if have is None else getattr(have, field)
            if a != b:
                differences.append(Difference("reserved_usage", subject, column, text(a), text(b)))
    return differences


async def reservation_fees(conn: asyncpg.Connection, window: Window) -> list[Difference]:
    differences = []
    for r in await conn.fetch(_FEES, window.start, window.end):
        sent = r["sent_usd"] if r["status"] == "sent" else None
        if sent == r["fee_usd"]:
            continue
        subject = {"reservation_id": r["id"], "tenant_id": r["tenant_id"]}
        differences.append(
            Difference(
                "reservation_fees",
                subject,
                "fee_usd",
                text(r["fee_usd"]),
                text(sent),
                reason="not_exported_yet" if sent is None else "fee_differs",
                pending=sent is None,
            )
        )
    return differences
