"""Usage rows in PostgreSQL: priced and inserted once per request id.

Both the access-log consumer and the journal's recovery write through here, so a request
billed by one is never billed again by the other (``ON CONFLICT (request_id) DO NOTHING``),
and both price through :meth:`PriceBook.price`: the row keeps its cost and what it was
computed with (region, multiplier, price version, tenant override).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from crosslogic.billing.accesslog import UsageRecord
from crosslogic.billing.pricing import PriceBook, Priced

# computed by pricing; every other column is a record field
PRICED = {
    "cost_usd": "cost",
    "region_code": "region_code",
    "price_multiplier": "multiplier",
    "price_id": "price_id",
    "tenant_price_id": "tenant_price_id",
}

# usage_records' columns as inserted, with the PostgreSQL type of each unnest()ed array
# (numeric travels as text, cast in the SELECT: asyncpg's binary numeric encoding measured
# 1.2 µs a value, a str() and its text encoding about 0.5)
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
    ("cost_usd", "text"),
    ("status_code", "int"),
    ("response_flags", "text"),
    ("started_at", "timestamptz"),
    ("duration_ms", "int"),
    ("usage_estimated", "bool"),
    ("source", "text"),
    ("region_code", "text"),
    ("price_multiplier", "text"),
    ("price_id", "bigint"),
    ("tenant_price_id", "bigint"),
)

NUMERIC = frozenset({"cost_usd", "price_multiplier"})
_NAMES = ", ".join(name for name, _ in COLUMNS)
_INSERT = (
    f"INSERT INTO usage_records ({_NAMES}) SELECT "
    + ", ".join(f"{name}::numeric" if name in NUMERIC else name for name, _ in COLUMNS)
    + " FROM unnest("
    + ", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(COLUMNS, start=1))
    + f") AS batch ({_NAMES}) ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
)


async def insert_usage(
    conn: asyncpg.Connection,
    records: Sequence[UsageRecord],
    book: PriceBook,
    *,
    prices: Sequence[Priced] | None = None,
) -> set[str]:
    """Insert rows that do not exist yet (by request_id); returns the ids inserted.
    ``prices``: each record's, if the caller priced them already (``priced``)."""
    rows = await conn.fetch(_INSERT, *columns(records, book, prices=prices))
    return {r["request_id"] for r in rows}


def priced(record: UsageRecord, book: PriceBook) -> Priced:
    return book.price(
        tenant_id=record.tenant_id,
        model_id=record.model_id,
        endpoint=record.endpoint,
        started_at=record.started_at,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        region_code=book.region_of(record.node_id),
    )


def columns(
    records: Sequence[UsageRecord], book: PriceBook, *, prices: Sequence[Priced] | None = None
) -> list[Sequence[object]]:
    """One array per column of ``COLUMNS``, in its order (records and prices are tuples:
    transposed by zip, not attribute by attribute)."""
    if not records:
        return [() for _ in COLUMNS]
    if prices is None:
        prices = [priced(r, book) for r in records]
    fields = dict(zip(UsageRecord._fields, zip(*records, strict=True), strict=True))
    computed = dict(zip(Priced._fields, zip(*prices, strict=True), strict=True))
    for column, field in PRICED.items():
        values = computed[field]
        fields[column] = tuple(map(str, values)) if column in NUMERIC else values
    return [fields[name] for name, _ in COLUMNS]
