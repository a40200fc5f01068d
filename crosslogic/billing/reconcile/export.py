"""Exported meter events against the hourly aggregates they were planned from.

For every tenant with a Stripe customer and every (hour, model, meter), the events Stripe
accepted (``billing_events.status = 'sent'``) add up to the hour's total in ``usage_hourly``
(summed over environments and regions, less what reserved capacity covered: the view
``metered_hourly``, as the export sends it). Short of it is *pending*
(not planned yet, or planned and waiting for a retry: the next export sends it), except for
an hour older than the export's lookback, which Stripe would refuse: that usage is never
billed, a difference (``past_lookback``). Above it is a difference (``hour_shrank``): meter
events cannot be negative, so it needs an operator's meter event adjustment in Stripe.
Tenants without a Stripe customer are not exported and not checked.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from crosslogic.billing.hours import HOUR
from crosslogic.billing.reconcile.findings import Difference, Window
from crosslogic.billing.stripe_export import LOOKBACK

HOUR_SHRANK = "hour_shrank"
PAST_LOOKBACK = "past_lookback"
NOT_EXPORTED_YET = "not_exported_yet"

# $1, $2: the window (NULL: unbounded)
_EXPORTED_VS_HOURLY = """
WITH totals AS (
    SELECT tenant_id, hour, model_id, prompt_tokens, completion_tokens
    FROM metered_hourly
    WHERE ($1::timestamptz IS NULL OR hour >= $1) AND ($2::timestamptz IS NULL OR hour < $2)
), metered AS (
    SELECT tenant_id, hour, model_id, m.meter,
           CASE m.meter WHEN 'prompt_tokens' THEN prompt_tokens ELSE completion_tokens END
               AS total
    FROM totals CROSS JOIN (VALUES ('prompt_tokens'), ('completion_tokens')) AS m (meter)
), events AS (
    SELECT tenant_id, hour, model_id, meter,
           coalesce(sum(quantity) FILTER (WHERE status = 'sent'), 0)::bigint AS sent
    FROM billing_events
    WHERE ($1::timestamptz IS NULL OR hour >= $1) AND ($2::timestamptz IS NULL OR hour < $2)
      AND reservation_id IS NULL
    GROUP BY tenant_id, hour, model_id, meter
)
SELECT hour, tenant_id::text AS tenant_id, model_id, meter,
       coalesce(x.total, 0) AS total, coalesce(e.sent, 0) AS sent
FROM metered AS x FULL JOIN events AS e USING (tenant_id, hour, model_id, meter)
JOIN tenants AS tn ON tn.id = tenant_id
WHERE coalesce(tn.stripe_customer_id, '') <> '' AND coalesce(x.total, 0) <> coalesce(e.sent, 0)
ORDER BY hour, tenant_id, model_id, meter
"""


async def exported_vs_hourly(conn: asyncpg.Connection, window: Window) -> list[Difference]:
    """Every (tenant, hour, model, meter) whose sent events differ from its aggregate."""
    now: datetime = await conn.fetchval("SELECT now()")  # the snapshot's moment
    differences = []
    for row in await conn.fetch(_EXPORTED_VS_HOURLY, window.start, window.end):
        hour = row["hour"].astimezone(UTC)
        total, sent = row["total"], row["sent"]
        if sent > total:
            reason, pending = HOUR_SHRANK, False
        elif hour + HOUR <= now - LOOKBACK:
            reason, pending = PAST_LOOKBACK, False
        else:
            reason, pending = NOT_EXPORTED_YET, True
        subject = {
            "hour": hour.isoformat(),
            "tenant_id": row["tenant_id"],
            "model_id": row["model_id"],
        }
        differences.append(
            Difference(
                "stripe_export",
                subject,
                row["meter"],
                str(total),
                str(sent),
                reason=reason,
                pending=pending,
            )
        )
    return differences
