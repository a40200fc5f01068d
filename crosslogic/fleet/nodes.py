"""The node registry in PostgreSQL: register, heartbeat, drain, remove, deregister, and the
sweep that ends drains and forgets silent nodes (the operators' listing is
:mod:`crosslogic.fleet.listing`).

Each operation runs on the caller's connection, in the caller's transaction (the admin API's
request, or one CLI command): the change, its audit row (entity ``node``; heartbeats are not
audited) and the ``crosslogic_nodes`` NOTIFY that makes xDS rebuild Envoy's endpoints commit
together. What a status means and what a heartbeat does is :mod:`crosslogic.fleet.lifecycle`.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from crosslogic import audit
from crosslogic.contracts import channels
from crosslogic.db.rows import as_dict
from crosslogic.errors import Conflict, Invalid, NotFound
from crosslogic.fleet import credentials, lifecycle
from crosslogic.fleet.errors import NodeRemoved
from crosslogic.fleet.lifecycle import ACTIVE, DEAD, DRAINING, REMOVED, ROUTED
from crosslogic.fleet.requests import Heartbeat, Registration
from crosslogic.fleet.tokens import Scope
from crosslogic.xds import weights

ENTITY = "node"
# a node as the audit log and the operators see it (never its credential's hash)
NODE = """
    n.id, m.name AS model, n.address, n.port, n.provider, n.region_code, n.zone, n.gpu_type,
    n.gpu_count, n.capacity, n.spot, n.transport, n.status, n.requests_running, n.requests_waiting,
    n.kv_cache_usage_perc, n.registered_at, n.last_heartbeat_at, n.drain_started_at,
    n.removed_at, n.registration_token_id::text AS registration_token_id
"""
_ONE = f"SELECT {NODE} FROM nodes n JOIN models m ON m.id = n.model_id WHERE n.id = $1"


def _unknown(node_id: str) -> NotFound:
    return NotFound("node", node_id, message=f"Unknown node '{node_id}'; register again.")


def removed_error(node_id: str) -> NodeRemoved:
    return NodeRemoved(
        f"Node '{node_id}' was removed (by an operator, or at the end of its drain); "
        "it must not register again on its own."
    )


async def _row(conn: asyncpg.Connection, node_id: str, *, lock: bool = False) -> dict[str, Any]:
    row = await conn.fetchrow(_ONE + (" FOR UPDATE OF n" if lock else ""), node_id)
    return as_dict(row)


async def _changed(
    conn: asyncpg.Connection, *, actor: str, action: str, node_id: str, before: dict[str, Any]
) -> dict[str, Any]:
    after = await _row(conn, node_id)
    await audit.record(
        conn,
        actor=actor,
        action=f"node.{action}",
        entity=ENTITY,
        entity_id=node_id,
        before=before or None,
        after=after,
    )
    await conn.execute(f"NOTIFY {channels.NODES}")
    return after


async def register(conn: asyncpg.Connection, reg: Registration, *, scope: Scope) -> dict[str, Any]:
    """The node (re)registered, with ``node_credential``: the secret for its heartbeats,
    drain and deregistration, shown this once. Re-registering an id issues a new
    credential (the old one stops working)."""
    scope.check(provider=reg.provider, region=reg.region)
    model_id = await conn.fetchval(
        "SELECT id FROM models WHERE name = $1 AND status = 'active'", reg.model
    )
    if model_id is None:
        raise NotFound(
            "model",
            reg.model,
            message=f"The model '{reg.model}' is not in the catalog.",
            param="model",
        )
    if not await conn.fetchval("SELECT 1 FROM regions WHERE code = $1", reg.region):
        raise Invalid(f"Unknown region '{reg.region}'.", code="unknown_region", param="region")
    actor = f"node:{reg.node_id}"
    # a node restarted on the same address under a new id replaces the old row
    replaced = await conn.fetch(
        "UPDATE nodes SET status = 'dead' WHERE address = $1 AND port = $2 AND id <> $3 "
        "AND status IN ('active', 'draining') RETURNING id",
        reg.address,
        reg.port,
        reg.node_id,
    )
    for old in replaced:
        await audit.record(
            conn,
            actor=actor,
            action="node.replace",
            entity=ENTITY,
            entity_id=old["id"],
            before=None,
            after={"status": DEAD, "replaced_by": reg.node_id},
        )
    before = await _row(conn, reg.node_id, lock=True)
    secret = credentials.new_node_credential()
    await conn.execute(
        """
        INSERT INTO nodes (id, model_id, address, port, provider, region_code, gpu_type, zone,
                           gpu_count, capacity, spot, credential_hash, registration_token_id,
                           transport)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::uuid, $14)
        ON CONFLICT (id) DO UPDATE SET model_id = $2, address = $3, port = $4, provider = $5,
            region_code = $6, gpu_type = $7, zone = $8, gpu_count = $9, capacity = $10,
            spot = $11, credential_hash = $12, registration_token_id = $13::uuid,
            transport = $14,
            status = 'active', registered_at = now(), last_heartbeat_at = now(),
            requests_running = 0, requests_waiting = 0, kv_cache_usage_perc = 0,
            drain_started_at = NULL, removed_at = NULL
        """,
        reg.node_id,
        model_id,
        reg.address,
        reg.port,
        reg.provider,
        reg.region,
        reg.gpu_type,
        reg.zone,
        reg.gpu_count,
        reg.capacity,
        reg.spot,
        credentials.digest(secret),
        scope.token_id,
        reg.transport,
    )
    after = await _changed(conn, actor=actor, action="register", node_id=reg.node_id, before=before)
    return {**after, "node_credential": secret}


async def credential_hash(conn: asyncpg.Connection, node_id: str) -> tuple[bool, bytes | None]:
    """(whether the node exists, the hash of its credential: None for a row registered
    before credentials existed)."""
    row = await conn.fetchrow("SELECT credential_hash FROM nodes WHERE id = $1", node_id)
    return (False, None) if row is None else (True, row["credential_hash"])


async def heartbeat(
    conn: asyncpg.Connection, node_id: str, beat: Heartbeat, *, heartbeat_timeout: float
) -> str:
    """Record the load; returns the node's status after it. NotFound (register again) for a
    dead or unknown node, NodeRemoved for a removed one; a draining node that reports
    nothing running is removed here (its drain is over: the caller commits that, then tells
    the node with :func:`removed_error`)."""
    row = await conn.fetchrow(
        "SELECT status, load_weight, health_weight FROM nodes WHERE id = $1 FOR UPDATE", node_id
    )
    status = None if row is None else row["status"]
    outcome = lifecycle.after_heartbeat(status, requests_running=beat.requests_running)
    if outcome.removed:
        raise removed_error(node_id)
    if outcome.forgotten:
        raise _unknown(node_id)
    before = await _row(conn, node_id) if outcome.drained else {}
    assert row is not None  # a node without a row is forgotten above
    settled = weights.on_heartbeat(
        weights.Published(row["load_weight"], row["health_weight"]),
        weights.Load(beat.requests_running, beat.requests_waiting, beat.kv_cache_usage_perc),
        heartbeat_timeout=heartbeat_timeout,
    )
    await conn.execute(
        """
        UPDATE nodes SET last_heartbeat_at = now(), requests_running = $2,
            requests_waiting = $3, kv_cache_usage_perc = $4, status = $5,
            removed_at = CASE WHEN $5 = 'removed' THEN now() ELSE removed_at END,
            load_weight = $6, health_weight = $7
        WHERE id = $1
        """,
        node_id,
        beat.requests_running,
        beat.requests_waiting,
        beat.kv_cache_usage_perc,
        outcome.status,
        settled.load_weight,
        settled.health_weight,
    )
    if settled != weights.Published(row["load_weight"], row["health_weight"]):
        # past the hysteresis band: xDS pushes the new weight (rate-bounded on its side)
        await conn.execute("SELECT pg_notify($1, $2)", channels.NODES, channels.NODE_WEIGHTS)
    if outcome.drained:
        await _changed(conn, actor=audit.SYSTEM, action="drained", node_id=node_id, before=before)
    assert outcome.status is not None
    return outcome.status


async def drain(conn: asyncpg.Connection, *, actor: str, node_id: str) -> dict[str, Any]:
    """No new requests from now on (Envoy's EDS DRAINING); in-flight ones complete, then the
    node is removed (its heartbeat reports nothing running, or NODE_DRAIN_TIMEOUT passes).
    Draining a draining node changes nothing."""
    before = await _row(conn, node_id, lock=True)
    if not before:
        raise _unknown(node_id)
    if before["status"] == DRAINING:
        return before
    if before["status"] != ACTIVE:
        raise Conflict(
            f"Node '{node_id}' is {before['status']}: only an active node can be drained.",
            code="node_not_active",
        )
    await conn.execute(
        "UPDATE nodes SET status = 'draining', drain_started_at = now() WHERE id = $1", node_id
    )
    return await _changed(conn, actor=actor, action="drain", node_id=node_id, before=before)


async def remove(conn: asyncpg.Connection, *, actor: str, node_id: str) -> dict[str, Any]:
    """Out of the routing table at once and for good: its heartbeats are refused (410)
    until it registers again."""
    before = await _row(conn, node_id, lock=True)
    if not before:
        raise _unknown(node_id)
    if before["status"] == REMOVED:
        return before
    await conn.execute(
        "UPDATE nodes SET status = 'removed', removed_at = now() WHERE id = $1", node_id
    )
    return await _changed(conn, actor=actor, action="remove", node_id=node_id, before=before)


async def deregister(conn: asyncpg.Connection, *, node_id: str) -> dict[str, Any]:
    """The node leaves on its own (shutdown): dead, and welcome to register again."""
    before = await _row(conn, node_id, lock=True)
    if not before or before["status"] not in ROUTED:
        raise _unknown(node_id)
    await conn.execute("UPDATE nodes SET status = 'dead' WHERE id = $1", node_id)
    return await _changed(
        conn, actor=f"node:{node_id}", action="deregister", node_id=node_id, before=before
    )


async def sweep(
    conn: asyncpg.Connection, *, drain_timeout: float, heartbeat_timeout: float
) -> list[str]:
    """Remove nodes whose drain outlived ``drain_timeout`` and forget (dead) nodes silent
    for :func:`~crosslogic.fleet.lifecycle.forget_after`; returns the ids changed."""
    changed: list[str] = []
    for action, sql, seconds in (
        (
            "drain_timeout",
            "SELECT id FROM nodes WHERE status = 'draining' "
            "AND drain_started_at < now() - make_interval(secs => $1) FOR UPDATE",
            drain_timeout,
        ),
        (
            "expire",
            "SELECT id FROM nodes WHERE status IN ('active', 'draining') "
            "AND last_heartbeat_at < now() - make_interval(secs => $1) FOR UPDATE",
            lifecycle.forget_after(heartbeat_timeout),
        ),
    ):
        for row in await conn.fetch(sql, seconds):
            node_id = row["id"]
            before = await _row(conn, node_id)
            status = REMOVED if action == "drain_timeout" else DEAD
            await conn.execute(
                "UPDATE nodes SET status = $2, "
                "removed_at = CASE WHEN $2 = 'removed' THEN now() ELSE removed_at END "
                "WHERE id = $1",
                node_id,
                status,
            )
            await _changed(conn, actor=audit.SYSTEM, action=action, node_id=node_id, before=before)
            changed.append(node_id)
    return changed
