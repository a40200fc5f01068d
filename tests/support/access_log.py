"""Access-log lines as Envoy writes them (envoy/envoy.yaml's json_format), for accounts that
exist: a few tenants with two environments and a key each, models with list prices (one
serving embeddings), two regions with a node each, a contract price and a discount. Used by
``python -m bench.billing`` and by the consumer's batch tests.

The mix of a load's lines: 85% answered chat requests, 5% streams the client left before
the usage chunk, 5% embeddings, 3% refused by a rate limit (not billable, refunded), 2%
answered by Envoy for a failed node; each with a token reservation of four counters, and
its admission journaled as ext_authz does. The models are deprecated and the nodes dead:
priced, never routed to (the tests' stack is not disturbed).
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from crosslogic.contracts.journal import Admission, boots_key, encode, journal_key
from crosslogic.redis_client import RedisClient

TENANTS = 4
MODELS = ("chat-a", "chat-b", "embed")  # the last one serves embeddings
REGIONS = (("us", "1.0000"), ("eu", "1.2500"))
BOOT = "b0" * 8
# 7 ms apart: 50,000 lines span 09:58:00 to 10:03:50, across an hour boundary
START = datetime(2026, 11, 30, 9, 58, tzinfo=UTC)
STEP = timedelta(milliseconds=7)
JOURNAL_CHUNK = 2000


@dataclass(frozen=True)
class Key:
    tenant_id: str
    environment_id: str
    api_key_id: str


@dataclass(frozen=True)
class World:
    """The accounts the lines name: ``keys`` (two per tenant), ``models`` (the last one for
    embeddings), ``nodes`` (one per region, in ``REGIONS``' order)."""

    keys: list[Key]
    models: list[int]
    nodes: list[str]


async def seed(conn: asyncpg.Connection, *, prefix: str = "bench") -> World:
    """The accounts, named ``prefix``-...: a contract price for the first tenant's first
    model, a 12.5% discount for the second tenant's."""
    for code, multiplier in REGIONS:
        await conn.execute(
            "INSERT INTO regions (code, name, provider, price_multiplier) "
            "VALUES ($1, $1, 'bench', $2::numeric)",
            f"{prefix}-{code}",
            multiplier,
        )
    models = []
    for name in MODELS:
        model = await conn.fetchval(
            "INSERT INTO models (name, status) VALUES ($1, 'deprecated') RETURNING id",
            f"{prefix}-{name}",
        )
        await conn.execute(
            "INSERT INTO model_prices (model_id, prompt_per_mtok, completion_per_mtok, "
            "embedding_per_mtok, effective_at) VALUES ($1, 0.15, 0.6, 0.02, $2)",
            model,
            START - timedelta(days=30),
        )
        models.append(int(model))
    nodes = []
    for n, (code, _) in enumerate(REGIONS):
        node = f"{prefix}-node-{n}"
        await conn.execute(
            "INSERT INTO nodes (id, model_id, address, port, region_code, status) "
            "VALUES ($1, $2, $1, 1, $3, 'dead')",
            node,
            models[0],
            f"{prefix}-{code}",
        )
        nodes.append(node)
    keys = []
    for t in range(TENANTS):
        tenant = await conn.fetchval(
            "INSERT INTO tenants (name) VALUES ($1) RETURNING id::text", f"{prefix}-{t}"
        )
        for e in range(2):
            env = await conn.fetchval(
                "INSERT INTO environments (tenant_id, name) VALUES ($1, $2) RETURNING id::text",
                tenant,
                f"env{e}",
            )
            key = await conn.fetchval(
                "INSERT INTO api_keys (key_id, key_hash, tenant_id, environment_id) "
                "VALUES ($1, sha256(convert_to($1, 'UTF8')), $2, $3) RETURNING id::text",
                f"{prefix}_{t}{e}".replace("-", "_"),
                tenant,
                env,
            )
            keys.append(Key(tenant, env, key))
    overrides = [
        (keys[0].tenant_id, "contract", 0.1, 0.4, 0.01, None),
        (keys[2].tenant_id, "discount", None, None, None, 12.5),
    ]
    for tenant, kind, prompt, completion, embedding, discount in overrides:
        await conn.execute(
            "INSERT INTO tenant_prices (tenant_id, model_id, kind, prompt_per_mtok, "
            "completion_per_mtok, embedding_per_mtok, discount_percent, effective_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            tenant,
            models[0],
            kind,
            prompt,
            completion,
            embedding,
            discount,
            START - timedelta(days=1),
        )
    return World(keys, models, nodes)


def entry(
    world: World, n: int, rng: random.Random, *, start: datetime = START
) -> dict[str, object]:
    """The n-th line's entry, started ``n`` x ``STEP`` after ``start``."""
    key = world.keys[n % len(world.keys)]
    kind = rng.random()
    embeddings = 0.85 <= kind < 0.90
    model = world.models[-1] if embeddings else world.models[n % (len(world.models) - 1)]
    prompt = rng.randint(5, 2000)
    budget = rng.randint(16, 1024)
    reservation = {
        "tokens": float(prompt + budget),
        "counters": [
            [f"crosslogic:rl:{{t:{key.tenant_id}}}:{layer}:{ident}:tokens:60", 60000.0]
            for layer, ident in (
                ("global", ""),
                ("tenant", key.tenant_id),
                ("environment", key.environment_id),
                ("key", key.api_key_id),
            )
        ],
    }
    started = start + n * STEP
    line: dict[str, object] = {
        "request_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "boot": BOOT,
        "start_time": started.strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{started.microsecond // 1000:03d}Z",
        "duration_ms": rng.randint(5, 900),
        "method": "POST",
        "path": "/v1/embeddings" if embeddings else "/v1/chat/completions",
        "status": 200,
        "flags": "-",
        "upstream_host": f"10.0.0.{n % 2}:8000",
        "upstream_node": world.nodes[n % len(world.nodes)],
        "upstream_cluster": f"model_{model}",
        "tenant_id": key.tenant_id,
        "environment_id": key.environment_id,
        "api_key_id": key.api_key_id,
        "key_id": "bench",
        "model": "m",
        "model_id": float(model),
        "streamed": None,
        "prompt_tokens": float(prompt),
        "completion_tokens": 0.0 if embeddings else float(rng.randint(1, budget)),
        "completion_seen": None,
        "prompt_estimate": float(prompt),
        "token_estimate": float(prompt + budget),
        "reservation": reservation,
        "authz_reservation": None,
    }
    if 0.80 <= kind < 0.85:  # a stream the client left before the usage chunk
        line.update(streamed=True, flags="DC", status=0, prompt_tokens=None)
        line.update(completion_tokens=None, completion_seen=float(rng.randint(0, budget)))
    elif 0.90 <= kind < 0.93:  # refused by a rate limit: never reached a node
        line.update(status=429, upstream_host=None, upstream_node=None, upstream_cluster=None)
        line.update(prompt_tokens=None, completion_tokens=None)
    elif kind >= 0.98:  # the node failed it
        line.update(status=503, flags="UF", prompt_tokens=None, completion_tokens=None)
    return line


def entries(
    world: World, count: int, *, seed_value: int = 7, start: datetime = START
) -> list[dict[str, object]]:
    rng = random.Random(seed_value)
    return [entry(world, n, rng, start=start) for n in range(count)]


def encoded(lines: list[dict[str, object]]) -> bytes:
    """As Envoy writes them: compact JSON, one entry a line."""
    return b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in lines)


async def journal(redis: RedisClient, world: World, lines: list[dict[str, object]]) -> None:
    """Every line's admission journal entry, as ext_authz writes it before allowing."""
    key = world.keys[0]
    admitted = Admission(
        key.tenant_id,
        key.environment_id,
        key.api_key_id,
        world.models[0],
        "/v1/chat/completions",
        streamed=False,
        prompt_estimate=100,
        token_estimate=500,
        admitted_at=START,
    )
    value = encode(admitted)
    await redis.call("SADD", boots_key("gateway"), BOOT)
    for i in range(0, len(lines), JOURNAL_CHUNK):
        chunk = lines[i : i + JOURNAL_CHUNK]
        await redis.call(
            "HSET", journal_key(BOOT), *[x for e in chunk for x in (e["request_id"], value)]
        )
