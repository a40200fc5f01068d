"""Tenants and keys made straight in the stack's database: tenants by SQL, keys the one
audited way an operator makes them (``accounts.api_keys.create``)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from crosslogic import audit
from crosslogic.accounts import api_keys
from crosslogic.accounts.requests import KeySpec
from crosslogic.db.connection import connect
from crosslogic.stack import Stack
from tests.support.db import run_db


@dataclass(frozen=True)
class CreatedKey:
    api_key_id: str
    key_id: str
    plaintext: str  # shown once; only its hash is stored
    tenant_id: str
    environment_id: str


def demo_key(stack: Stack, *, environment_id: str | None = None, **spec: Any) -> CreatedKey:
    """A new key in ``environment_id`` (default: the demo's); ``spec`` holds KeySpec's fields
    (name, allowed_models, rate_limit_rpm...)."""
    if environment_id is None:
        assert stack.demo is not None
        environment_id = stack.demo.environment_id

    async def go() -> CreatedKey:
        conn = await connect(stack.settings)
        try:
            async with conn.transaction():
                row = await api_keys.create(
                    conn, actor=audit.SYSTEM, environment_id=environment_id, spec=KeySpec(**spec)
                )
        finally:
            await conn.close()
        return CreatedKey(
            api_key_id=row["api_key_id"],
            key_id=row["key_id"],
            plaintext=row["key"],
            tenant_id=row["tenant_id"],
            environment_id=row["environment_id"],
        )

    return asyncio.run(go())


def fresh_tenant(stack: Stack) -> tuple[str, str]:
    """A new tenant and its environment: (tenant id, environment id)."""
    tenant = run_db(
        stack,
        "INSERT INTO tenants (name) VALUES ($1) RETURNING id::text",
        f"rl-{time.monotonic_ns()}",
    )[0]["id"]
    env = run_db(
        stack,
        "INSERT INTO environments (tenant_id, name) VALUES ($1, 'prod') RETURNING id::text",
        tenant,
    )[0]["id"]
    return tenant, env


def key_in(stack: Stack, tenant: str, env: str) -> CreatedKey:
    """A new key in ``env`` (which names its tenant)."""
    return demo_key(stack, environment_id=env)
