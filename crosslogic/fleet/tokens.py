"""Registration tokens in PostgreSQL: created, listed and revoked by operators (audited as
entity ``node_token``), and checked when a node registers.

A token is shown in plaintext once, in what :func:`create` returns; only its hash is
stored. ``NODE_REGISTRATION_TOKEN``, when set, is made a token of its own at the admin
process's start (:func:`ensure_configured`), so containers and the stack's nodes can be
given one before any operator has created one; revoking it sticks across restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from crosslogic import audit
from crosslogic.db.rows import as_dict
from crosslogic.errors import Invalid, NotFound
from crosslogic.fleet import credentials
from crosslogic.fleet.errors import Forbidden
from crosslogic.fleet.requests import TokenSpec

ENTITY = "node_token"
CONFIGURED_NAME = "NODE_REGISTRATION_TOKEN"
TOKEN = (
    "id::text AS id, name, prefix, provider, region_code AS region, created_by, created_at, "
    "revoked_at, last_used_at"
)


@dataclass(frozen=True)
class Scope:
    """What a registration token may register: nodes of ``provider`` in ``region`` (None:
    any)."""

    token_id: str
    name: str
    provider: str | None
    region: str | None

    def check(self, *, provider: str, region: str) -> None:
        """Forbidden unless a node of ``provider`` in ``region`` is within the scope."""
        for what, allowed, asked in (
            ("provider", self.provider, provider),
            ("region", self.region, region),
        ):
            if allowed is not None and asked != allowed:
                raise Forbidden(
                    f"This registration token registers nodes of {what} '{allowed}' only, "
                    f"not '{asked}'.",
                    code="registration_token_out_of_scope",
                    param=what,
                )


async def _insert(
    conn: asyncpg.Connection, *, actor: str, spec: TokenSpec, plaintext: str
) -> dict[str, Any] | None:
    if spec.region is not None and not await conn.fetchval(
        "SELECT 1 FROM regions WHERE code = $1", spec.region
    ):
        raise Invalid(f"Unknown region '{spec.region}'.", code="unknown_region", param="region")
    row = await conn.fetchrow(
        f"""
        INSERT INTO node_registration_tokens (name, token_hash, prefix, provider, region_code,
                                              created_by)
        VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (token_hash) DO NOTHING RETURNING {TOKEN}
        """,
        spec.name,
        credentials.digest(plaintext),
        plaintext[: credentials.SHOWN_PREFIX_LEN],
        spec.provider,
        spec.region,
        actor,
    )
    if row is None:
        return None
    created = as_dict(row)
    await audit.record(
        conn,
        actor=actor,
        action="node_token.create",
        entity=ENTITY,
        entity_id=created["id"],
        before=None,
        after=created,
    )
    return created


async def create(conn: asyncpg.Connection, *, actor: str, spec: TokenSpec) -> dict[str, Any]:
    """The new token's row plus ``token``, the plaintext: shown this once, stored hashed."""
    plaintext = credentials.new_registration_token()
    created = await _insert(conn, actor=actor, spec=spec, plaintext=plaintext)
    assert created is not None  # 256 random bits do not collide
    return {**created, "token": plaintext}


async def ensure_configured(conn: asyncpg.Connection, plaintext: str) -> None:
    """The configured token as a token (unscoped), unless it already is one (then it keeps
    its state: an operator's revocation sticks)."""
    await _insert(
        conn,
        actor=audit.SYSTEM,
        spec=TokenSpec(name=CONFIGURED_NAME),
        plaintext=plaintext,
    )


async def list_tokens(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(f"SELECT {TOKEN} FROM node_registration_tokens ORDER BY created_at")
    return [as_dict(r) for r in rows]


async def revoke(conn: asyncpg.Connection, *, actor: str, token_id: str) -> dict[str, Any]:
    """Revoked from now on (nodes registered with it keep their own credentials)."""
    before = await conn.fetchrow(
        f"SELECT {TOKEN} FROM node_registration_tokens WHERE id::text = $1 FOR UPDATE", token_id
    )
    if before is None:
        raise NotFound("registration token", token_id, code="node_token_not_found")
    row = await conn.fetchrow(
        f"UPDATE node_registration_tokens SET revoked_at = coalesce(revoked_at, now()) "
        f"WHERE id::text = $1 RETURNING {TOKEN}",
        token_id,
    )
    after = as_dict(row)
    await audit.record(
        conn,
        actor=actor,
        action="node_token.revoke",
        entity=ENTITY,
        entity_id=token_id,
        before=as_dict(before),
        after=after,
    )
    return after


async def scope_of(conn: asyncpg.Connection, plaintext: str) -> Scope | None:
    """The scope of a live (unrevoked) token; None for anything else."""
    row = await conn.fetchrow(
        "UPDATE node_registration_tokens SET last_used_at = now() "
        "WHERE token_hash = $1 AND revoked_at IS NULL "
        "RETURNING id::text AS id, name, provider, region_code",
        credentials.digest(plaintext),
    )
    if row is None:
        return None
    return Scope(
        token_id=row["id"], name=row["name"], provider=row["provider"], region=row["region_code"]
    )
