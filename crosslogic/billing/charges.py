"""What a tenant owes for a period, as invoice-like lines: reserved capacity's fees, its
overage, and metered usage outside any reservation. Pure, beside the one query that feeds it.

- ``reservation_fee``: the fixed fee of each reservation whose period starts in the window
  (the fee is due when the period starts, as Stripe is sent it).
- ``reservation_overage``: per reservation, the usage in its scope beyond what it covered,
  at the metered price.
- ``metered``: the usage outside every reservation's scope, at the metered price.

So ``amount_due_usd`` is the fees plus the metered cost less what reservations covered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

# $1 tenant, $2 start, $3 end: each reservation that overlaps the window, with its usage in it
_RESERVATIONS = """
SELECT r.id, m.name AS model, r.region_code AS region, r.tokens_per_minute, r.starts_at,
       r.ends_at, r.fee_usd,
       coalesce(sum(u.used_prompt_tokens + u.used_completion_tokens), 0)::bigint AS used_tokens,
       coalesce(sum(u.covered_prompt_tokens + u.covered_completion_tokens), 0)::bigint
           AS covered_tokens,
       coalesce(sum(u.used_cost_usd), 0) AS used_cost,
       coalesce(sum(u.covered_cost_usd), 0) AS covered_cost
FROM reservations r JOIN models m ON m.id = r.model_id
LEFT JOIN reserved_usage u ON u.reservation_id = r.id AND u.hour >= $2 AND u.hour < $3
WHERE r.tenant_id = $1 AND r.starts_at < $3 AND r.ends_at > $2
GROUP BY r.id, m.name
ORDER BY r.starts_at, r.id
"""


@dataclass(frozen=True)
class Reserved:
    """One reservation overlapping the window, and its usage within the window."""

    id: int
    model: str
    region: str | None
    tokens_per_minute: int
    starts_at: datetime
    ends_at: datetime
    fee_usd: Decimal
    used_tokens: int
    covered_tokens: int
    used_cost: Decimal
    covered_cost: Decimal


async def reserved(
    conn: asyncpg.Connection, *, tenant_id: str, start: datetime, end: datetime
) -> list[Reserved]:
    return [Reserved(**dict(r)) for r in await conn.fetch(_RESERVATIONS, tenant_id, start, end)]


def _money(amount: Decimal) -> str:
    return f"{amount:f}"


def charges(
    *,
    tokens: int,
    cost: Decimal,
    reservations: Iterable[Reserved],
    start: datetime,
    end: datetime,
) -> dict[str, Any]:
    """The window's lines and amount due, from its total metered ``tokens`` and ``cost``
    (every usage, reserved or not) and the reservations overlapping it."""
    lines: list[dict[str, Any]] = []
    in_scope_tokens, in_scope_cost, due = 0, Decimal(0), Decimal(0)
    for r in reservations:
        if start <= r.starts_at < end:
            lines.append(
                {
                    "kind": "reservation_fee",
                    "reservation_id": r.id,
                    "model": r.model,
                    "region": r.region,
                    "tokens_per_minute": r.tokens_per_minute,
                    "period_start": r.starts_at.isoformat(),
                    "period_end": r.ends_at.isoformat(),
                    "amount_usd": _money(r.fee_usd),
                }
            )
            due += r.fee_usd
        overage = r.used_cost - r.covered_cost
        lines.append(
            {
                "kind": "reservation_overage",
                "reservation_id": r.id,
                "model": r.model,
                "region": r.region,
                "covered_tokens": r.covered_tokens,
                "tokens": r.used_tokens - r.covered_tokens,
                "amount_usd": _money(overage),
            }
        )
        due += overage
        in_scope_tokens += r.used_tokens
        in_scope_cost += r.used_cost
    metered = cost - in_scope_cost
    lines.append(
        {"kind": "metered", "tokens": tokens - in_scope_tokens, "amount_usd": _money(metered)}
    )
    due += metered
    return {"lines": lines, "amount_due_usd": _money(due)}
