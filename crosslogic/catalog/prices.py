"""Price versions in PostgreSQL: a model's list prices and a tenant's overrides.

Versions are only ever added (history is what usage rows were priced with, by id); one that
starts at the same moment as an existing one is a Conflict. Removing an override adds a
version of kind ``none`` from its effective time on, so the past stays as billed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from crosslogic.accounts import records
from crosslogic.catalog import store
from crosslogic.catalog.money import plain_row
from crosslogic.catalog.requests import PriceVersionIn, TenantPriceIn
from crosslogic.errors import Conflict, NotFound

_PRICE = (
    "id, model_id, prompt_per_mtok, completion_per_mtok, embedding_per_mtok, effective_at, "
    "created_at"
)
_TENANT_PRICE = (
    "t.id, t.tenant_id::text, t.model_id, m.name AS model, t.kind, t.prompt_per_mtok, "
    "t.completion_per_mtok, t.embedding_per_mtok, t.discount_percent, t.effective_at, "
    "t.created_at"
)


def _duplicate(what: str, when: datetime) -> Conflict:
    return Conflict(
        f"{what} already has a version effective at {when.isoformat()}.",
        code="price_version_exists",
        param="effective_at",
    )


async def history(conn: asyncpg.Connection, model: str) -> list[dict[str, Any]]:
    """Every list price version of ``model``, oldest first."""
    ident = await store.model_id(conn, model)
    rows = await conn.fetch(
        f"SELECT {_PRICE} FROM model_prices WHERE model_id = $1 ORDER BY effective_at", ident
    )
    return [plain_row(r) for r in rows]


async def add_version(
    conn: asyncpg.Connection, *, actor: str, model: str, version: PriceVersionIn
) -> dict[str, Any]:
    ident = await store.model_id(conn, model)
    rates = version.rates
    row = await conn.fetchrow(
        "INSERT INTO model_prices (model_id, prompt_per_mtok, completion_per_mtok, "
        "embedding_per_mtok, effective_at) VALUES ($1, $2, $3, $4, $5) "
        f"ON CONFLICT (model_id, effective_at) DO NOTHING RETURNING {_PRICE}",
        ident,
        rates.prompt,
        rates.completion,
        rates.embedding,
        version.effective_at,
    )
    if row is None:
        raise _duplicate(f"Model '{model}'", version.effective_at)
    after = plain_row(row)
    await store.changed(
        conn,
        actor=actor,
        action="model_price.create",
        entity="model_price",
        entity_id=str(after["id"]),
        before=None,
        after=after,
    )
    return after


async def _insert_override(
    conn: asyncpg.Connection,
    *,
    tenant_id: str,
    model_id: int,
    kind: str,
    when: datetime,
    spec: TenantPriceIn | None = None,
) -> dict[str, Any]:
    rates = None if spec is None else spec.rates
    ident = await conn.fetchval(
        "INSERT INTO tenant_prices (tenant_id, model_id, kind, prompt_per_mtok, "
        "completion_per_mtok, embedding_per_mtok, discount_percent, effective_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
        "ON CONFLICT (tenant_id, model_id, effective_at) DO NOTHING RETURNING id",
        tenant_id,
        model_id,
        kind,
        None if rates is None else rates.prompt,
        None if rates is None else rates.completion,
        None if rates is None else rates.embedding,
        None if spec is None else spec.discount_percent,
        when,
    )
    if ident is None:
        raise _duplicate("This tenant's price of the model", when)
    return plain_row(
        await conn.fetchrow(
            f"SELECT {_TENANT_PRICE} FROM tenant_prices t JOIN models m ON m.id = t.model_id "
            "WHERE t.id = $1",
            ident,
        )
    )


async def _audited(
    conn: asyncpg.Connection, *, actor: str, action: str, after: dict[str, Any]
) -> dict[str, Any]:
    await store.changed(
        conn,
        actor=actor,
        action=action,
        entity="tenant_price",
        entity_id=f"{after['tenant_id']}:{after['model_id']}",
        before=None,
        after=after,
    )
    return after


async def set_override(
    conn: asyncpg.Connection, *, actor: str, tenant_id: str, spec: TenantPriceIn
) -> dict[str, Any]:
    """A contract price or a discount for the tenant on a model from ``spec.effective_at``."""
    tenant = await records.get(conn, "tenant", tenant_id)
    model_id = await store.model_id(conn, spec.model, param="model")
    kind = "discount" if spec.discount_percent is not None else "contract"
    after = await _insert_override(
        conn,
        tenant_id=tenant["id"],
        model_id=model_id,
        kind=kind,
        when=spec.effective_at,
        spec=spec,
    )
    return await _audited(conn, actor=actor, action="tenant_price.set", after=after)


async def remove_override(
    conn: asyncpg.Connection, *, actor: str, tenant_id: str, model: str, effective_at: datetime
) -> dict[str, Any]:
    """From ``effective_at`` on, the tenant pays the list price of ``model`` again."""
    tenant = await records.get(conn, "tenant", tenant_id)
    model_id = await store.model_id(conn, model)
    latest = await conn.fetchval(
        "SELECT kind FROM tenant_prices WHERE tenant_id = $1 AND model_id = $2 "
        "ORDER BY effective_at DESC LIMIT 1",
        tenant["id"],
        model_id,
    )
    if latest is None or latest == "none":
        raise NotFound(
            "tenant_price",
            f"{tenant['id']}:{model}",
            message=f"No override of '{model}' to remove.",
        )
    after = await _insert_override(
        conn, tenant_id=tenant["id"], model_id=model_id, kind="none", when=effective_at
    )
    return await _audited(conn, actor=actor, action="tenant_price.remove", after=after)


async def overrides(
    conn: asyncpg.Connection, *, tenant_id: str, model: str | None = None
) -> list[dict[str, Any]]:
    """The tenant's override versions (of one model if given), by model then time."""
    tenant = await records.get(conn, "tenant", tenant_id)
    model_id = None if model is None else await store.model_id(conn, model, param="model")
    rows = await conn.fetch(
        f"SELECT {_TENANT_PRICE} FROM tenant_prices t JOIN models m ON m.id = t.model_id "
        "WHERE t.tenant_id = $1 AND ($2::int IS NULL OR t.model_id = $2) "
        "ORDER BY m.name, t.effective_at",
        tenant["id"],
        model_id,
    )
    return [plain_row(r) for r in rows]
