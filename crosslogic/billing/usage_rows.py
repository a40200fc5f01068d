"""Usage rows in PostgreSQL: priced and inserted once per request id.

Both the access-log consumer and the journal's recovery write through here, so a request
billed by one is never billed again by the other (``ON CONFLICT (request_id) DO NOTHING``).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import asyncpg

from crosslogic.billing.accesslog import UsageRecord
from crosslogic.billing.pricing import FREE, Price

COST = "cost_usd"  # computed from the model's price; every other column is a record field

# usage_records' columns as inserted, with the PostgreSQL type of each unnest()ed array
COLUMNS: tuple[tuple[str, str], ...] = (
    ("request_id", "text"),
    ("tenant_id", "uuid"),
    ("environment_id", "uuid"),
    ("api_key_id", "uuid"),
    ("model_id", "int"),
    ("node_id", "text"),
    ("endpoint", "text"),
    ("streamed", "bool"),
    ("prompt_tokens", "int"),
    ("completion_tokens", "int"),
    (COST, "numeric"),
    ("status_code", "int"),
    ("response_flags", "text"),
    ("started_at", "timestamptz"),
    ("duration_ms", "int"),
    ("usage_estimated", "bool"),
    ("source", "text"),
)

_INSERT = (
    f"INSERT INTO usage_records ({', '.join(name for name, _ in COLUMNS)}) "
    "SELECT * FROM unnest("
    + ", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(COLUMNS, start=1))
    + ") ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
)


async def prices(db: asyncpg.Pool | asyncpg.Connection) -> dict[int, Price]:
    rows = await db.fetch("SELECT id, input_price_per_mtok, output_price_per_mtok FROM models")
    return {r["id"]: Price(r["input_price_per_mtok"], r["output_price_per_mtok"]) for r in rows}


async def insert_usage(
    conn: asyncpg.Connection, records: Sequence[UsageRecord], prices: dict[int, Price]
) -> set[str]:
    """Insert rows that do not exist yet (by request_id); returns the ids inserted."""
    rows = await conn.fetch(_INSERT, *columns(records, prices))
    return {r["request_id"] for r in rows}


def columns(records: Sequence[UsageRecord], prices: dict[int, Price]) -> list[list[object]]:
    """One array per column of ``COLUMNS``, in its order."""

    def cost(r: UsageRecord) -> Decimal:
        return prices.get(r.model_id, FREE).cost(
            prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens
        )

    return [[cost(r) if name == COST else getattr(r, name) for r in records] for name, _ in COLUMNS]
