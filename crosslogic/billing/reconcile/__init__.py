"""Reconciliation: the billing tables compared with each other, every difference named.

A check is an async function ``(connection, window) -> differences``; ``CHECKS`` holds
them by name, and ``crosslogic billing reconcile`` runs them all in one read-only snapshot:

- ``usage_hourly`` (``usage.py``): usage rows against the hourly aggregates;
- ``stripe_export`` (``export.py``): events Stripe accepted against those aggregates;
- ``quota`` and ``credit_grants`` (``credits.py``): each tenant's stored quota state against
  a recompute from its grants and usage, and no grant with a NULL or negative amount;
- ``reserved_usage`` and ``reservation_fees`` (``reserved.py``): each reserved hour's
  coverage against a recompute from its rows, and each started reservation's fee in Stripe.

What is expected to differ until the next run (hours waiting for aggregation, usage not
exported yet, a quota recompute due) is reported as pending, never as a difference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from crosslogic.billing.reconcile.credits import credit_grants, quota_state
from crosslogic.billing.reconcile.export import exported_vs_hourly
from crosslogic.billing.reconcile.findings import Check, Difference, Window
from crosslogic.billing.reconcile.reserved import reservation_fees, reserved_usage
from crosslogic.billing.reconcile.usage import usage_vs_hourly

__all__ = ["CHECKS", "Check", "Difference", "Reconciliation", "Window", "reconcile"]


@dataclass(frozen=True)
class Reconciliation:
    checks: tuple[str, ...]
    pending_hours: list[datetime]  # marked for aggregation
    differences: list[Difference] = field(default_factory=list)
    pending: list[Difference] = field(default_factory=list)  # the other checks' pending

    def as_dict(self) -> dict[str, Any]:
        return {
            "checks": list(self.checks),
            "pending_hours": [h.isoformat() for h in self.pending_hours],
            "pending": [d.as_dict() for d in self.pending],
            "differences": [d.as_dict() for d in self.differences],
        }


CHECKS: dict[str, Check] = {
    "usage_hourly": usage_vs_hourly,
    "stripe_export": exported_vs_hourly,
    "quota": quota_state,
    "credit_grants": credit_grants,
    "reserved_usage": reserved_usage,
    "reservation_fees": reservation_fees,
}


async def reconcile(
    conn: asyncpg.Connection, window: Window, *, checks: Mapping[str, Check] = CHECKS
) -> Reconciliation:
    """Run ``checks`` in one repeatable-read snapshot (the tables as of one moment)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        pending_hours = await conn.fetch(
            "SELECT hour FROM usage_hours_dirty WHERE ($1::timestamptz IS NULL OR hour >= $1) "
            "AND ($2::timestamptz IS NULL OR hour < $2) ORDER BY hour",
            window.start,
            window.end,
        )
        found = [d for check in checks.values() for d in await check(conn, window)]
    return Reconciliation(
        tuple(checks),
        [r["hour"].astimezone(UTC) for r in pending_hours],
        [d for d in found if not d.pending],
        [d for d in found if d.pending],
    )
