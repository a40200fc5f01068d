"""Tenants and keys made straight in the stack's database (no admin API, no audit)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from crosslogic.db.connection import connect
from crosslogic.extauthz import provisioning
from crosslogic.stack import Stack
from tests.support.db import connect_and, run_db


def demo_key(stack: Stack, **options: Any) -> provisioning.CreatedKey:
    """A new key of the demo tenant's environment."""
    assert stack.demo is not None

    async def go() -> provisioning.CreatedKey:
        conn = await connect(stack.settings)
        try:
            return await provisioning.create_key(
                conn,
                tenant_id=stack.demo.tenant_id,  # type: ignore[union-attr]
                environment_id=stack.demo.environment_id,
                **options,
            )  # type: ignore[union-attr]
        finally:
            await conn.close()

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


def key_in(stack: Stack, tenant: str, env: str) -> provisioning.CreatedKey:
    created: provisioning.CreatedKey = connect_and(
        stack,
        lambda conn: provisioning.create_key(conn, tenant_id=tenant, environment_id=env),
    )
    return created
