"""Writing tenants, environments, keys and catalog models (used by `up`, the CLI and tests)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from crosslogic.extauthz import keys


@dataclass(frozen=True)
class CreatedKey:
    api_key_id: str
    key_id: str
    plaintext: str  # shown once; only its hash is stored
    tenant_id: str
    environment_id: str


async def ensure_model(
    conn: asyncpg.Connection, name: str, *, input_price: Decimal, output_price: Decimal
) -> int:
    model_id: int = await conn.fetchval(
        """
        INSERT INTO models (name, input_price_per_mtok, output_price_per_mtok)
        VALUES ($1, $2, $3)
        ON CONFLICT (name) DO UPDATE SET status = 'active', updated_at = now()
        RETURNING id
        """,
        name,
        input_price,
        output_price,
    )
    return model_id


async def ensure_tenant(conn: asyncpg.Connection, name: str) -> str:
    tenant_id = await conn.fetchval(
        "INSERT INTO tenants (name) VALUES ($1) "
        "ON CONFLICT (name) DO UPDATE SET updated_at = now() RETURNING id::text",
        name,
    )
    return str(tenant_id)


async def ensure_environment(conn: asyncpg.Connection, tenant_id: str, name: str) -> str:
    environment_id = await conn.fetchval(
        "INSERT INTO environments (tenant_id, name) VALUES ($1, $2) "
        "ON CONFLICT (tenant_id, name) DO UPDATE SET updated_at = now() RETURNING id::text",
        tenant_id,
        name,
    )
    return str(environment_id)


async def create_key(
    conn: asyncpg.Connection,
    *,
    tenant_id: str,
    environment_id: str,
    name: str = "",
    allowed_models: list[str] | None = None,
    rate_limit_rpm: int | None = None,
) -> CreatedKey:
    new = keys.generate()
    api_key_id = await conn.fetchval(
        """
        INSERT INTO api_keys (key_id, key_hash, tenant_id, environment_id, name,
                              allowed_models, rate_limit_rpm)
        VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id::text
        """,
        new.key_id,
        new.key_hash,
        tenant_id,
        environment_id,
        name,
        allowed_models,
        rate_limit_rpm,
    )
    return CreatedKey(
        api_key_id=str(api_key_id),
        key_id=new.key_id,
        plaintext=new.plaintext,
        tenant_id=tenant_id,
        environment_id=environment_id,
    )
