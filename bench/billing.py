"""``python -m bench.billing [--rows N] [--profile]``: billing's own ceiling, the access-log
consumer alone, as fast as it can go.

An embedded PostgreSQL and Redis (the stack's own, started as ``crosslogic up`` starts them,
nothing else) are seeded with a few tenants, keys, models (one with an embeddings price),
two regions with a node each and tenant overrides (a contract and a discount). N access-log
lines as Envoy writes them (envoy/envoy.yaml's json_format: a mix of chat answers, streams
the client left early, embeddings, rate-limited and failed requests, each with a token
reservation of four counters) go into a log file, and every admitted request's entry into
the admission journal, as ext_authz writes it. Then the real :class:`AccessLogConsumer`
(with the settler, the journal and the quota keeper, as billing runs it) consumes the file
from the start until it is caught up. Printed: rows/s, and CPU seconds per row of the
consumer's process, of PostgreSQL (every backend and helper process) and of Redis (psutil).
``--profile``: the consumer under cProfile, its top functions (slower: for where, not how
fast). Indicative figures: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import psutil
import uvloop
from prometheus_client import CollectorRegistry

from crosslogic.billing.consumer import AccessLogConsumer, BillingMetrics
from crosslogic.billing.quota_store import QuotaKeeper
from crosslogic.billing.settlement import TokenSettler
from crosslogic.contracts.journal import Admission, boots_key, encode, journal_key
from crosslogic.db.connection import connect, create_pool
from crosslogic.journal.store import JournalStore
from crosslogic.plan import plan
from crosslogic.ports import with_free_ports
from crosslogic.redis_client import open_redis
from crosslogic.seeding import migrate_and_seed
from crosslogic.settings import Settings
from crosslogic.stack import Stack

TENANTS = 4
MODELS = ("bench-chat-a", "bench-chat-b", "bench-embed")
REGIONS = (("bench-us", "1.0000"), ("bench-eu", "1.2500"))
BOOT = "b0" * 8
START = datetime(2026, 11, 30, 9, 40, tzinfo=UTC)  # the lines span the hour boundary
JOURNAL_CHUNK = 2000

# CPU seconds by pid: of the consumer's process, of PostgreSQL's, of Redis'
Sample = tuple[dict[int, float], dict[int, float], dict[int, float]]


@dataclass(frozen=True)
class Key:
    tenant_id: str
    environment_id: str
    api_key_id: str


@dataclass(frozen=True)
class World:
    keys: list[Key]
    models: list[int]  # the last one is the embeddings model
    nodes: list[str]


async def seed(conn: asyncpg.Connection) -> World:
    """Tenants with two environments and a key each, models with list prices, regions with a
    node each, a contract price and a discount."""
    for code, multiplier in REGIONS:
        await conn.execute(
            "INSERT INTO regions (code, name, provider, price_multiplier) "
            "VALUES ($1, $1, 'bench', $2::numeric)",
            code,
            multiplier,
        )
    models = []
    for name in MODELS:
        model = await conn.fetchval("INSERT INTO models (name) VALUES ($1) RETURNING id", name)
        await conn.execute(
            "INSERT INTO model_prices (model_id, prompt_per_mtok, completion_per_mtok, "
            "embedding_per_mtok, effective_at) VALUES ($1, 0.15, 0.6, 0.02, $2)",
            model,
            START - timedelta(days=30),
        )
        models.append(int(model))
    nodes = []
    for n, (code, _) in enumerate(REGIONS):
        node = f"bench-node-{n}"
        await conn.execute(
            "INSERT INTO nodes (id, model_id, address, port, region_code) "
            "VALUES ($1, $2, '127.0.0.1', $3, $4)",
            node,
            models[0],
            10_000 + n,
            code,
        )
        nodes.append(node)
    keys = []
    for t in range(TENANTS):
        tenant = await conn.fetchval(
            "INSERT INTO tenants (name) VALUES ($1) RETURNING id::text", f"bench-{t}"
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
                f"bench{t}{e}",
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


def entry(world: World, n: int, rng: random.Random) -> tuple[str, dict[str, object]]:
    """The n-th line's request id and entry: 85% answered chat requests, 5% streams the
    client left early, 5% embeddings, 3% rate-limited (not billable, refunded), 2% failed."""
    key = world.keys[n % len(world.keys)]
    request_id = str(uuid.uuid4())
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
    started = START + timedelta(milliseconds=n * 7)
    node = world.nodes[n % len(world.nodes)]
    line: dict[str, object] = {
        "request_id": request_id,
        "boot": BOOT,
        "start_time": started.strftime("%Y-%m-%dT%H:%M:%S.") + f"{n % 1000:03d}Z",
        "duration_ms": rng.randint(5, 900),
        "method": "POST",
        "path": "/v1/embeddings" if embeddings else "/v1/chat/completions",
        "status": 200,
        "flags": "-",
        "upstream_host": f"127.0.0.1:{10_000 + n % 2}",
        "upstream_node": node,
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
        line.update(
            streamed=True,
            flags="DC",
            status=0,
            prompt_tokens=None,
            completion_tokens=None,
            completion_seen=float(rng.randint(0, budget)),
        )
    elif 0.90 <= kind < 0.93:  # refused by a rate limit: never reached a node
        line.update(status=429, upstream_host=None, upstream_node=None, upstream_cluster=None)
        line.update(prompt_tokens=None, completion_tokens=None)
    elif kind >= 0.98:  # the node failed it
        line.update(status=503, flags="UF", prompt_tokens=None, completion_tokens=None)
    return request_id, line


def write_log(path: Path, world: World, rows: int, *, seed_value: int = 7) -> list[str]:
    """N lines into ``path``; returns their request ids."""
    import json

    rng = random.Random(seed_value)
    ids = []
    with path.open("w") as f:
        for n in range(rows):
            request_id, line = entry(world, n, rng)
            ids.append(request_id)
            # Envoy writes compact JSON
            f.write(json.dumps(line, separators=(",", ":")) + "\n")
    return ids


async def fill_journal(settings: Settings, world: World, ids: list[str]) -> None:
    """Every request's admission journal entry, as ext_authz writes it before allowing."""
    redis = open_redis(settings, timeout=5.0)
    key = world.keys[0]
    value = encode(
        Admission(
            key.tenant_id,
            key.environment_id,
            key.api_key_id,
            world.models[0],
            "/v1/chat/completions",
            False,
            100,
            500,
            START,
        )
    )
    try:
        await redis.call("SADD", boots_key("gateway"), BOOT)
        for i in range(0, len(ids), JOURNAL_CHUNK):
            chunk = ids[i : i + JOURNAL_CHUNK]
            args = [part for rid in chunk for part in (rid, value)]
            await redis.call("HSET", journal_key(BOOT), *args)
    finally:
        redis.close()


def cpu_of(processes: list[psutil.Process]) -> dict[int, float]:
    seconds = {}
    for proc in processes:
        try:
            times = proc.cpu_times()
            seconds[proc.pid] = times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return seconds


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two samples (a process started meanwhile counts from zero)."""
    return sum(after[pid] - before.get(pid, 0.0) for pid in after)


async def consume(
    settings: Settings, log: Path, *, sample: Callable[[], Sample], profile: bool
) -> tuple[float, Sample, Sample, pstats.Stats | None]:
    """Runs the consumer until the file is consumed; returns the seconds it took, and CPU
    samples before and after (taken while the pool's backends are alive)."""
    pool = await create_pool(settings, max_size=settings.billing_db_pool)
    redis = open_redis(settings, timeout=1.0)
    registry = CollectorRegistry()
    keeper = QuotaKeeper(pool, registry)
    consumer = AccessLogConsumer(
        pool,
        log,
        BillingMetrics(registry),
        settler=TokenSettler(redis, registry),
        journal=JournalStore(redis),
        committed=keeper.mark,
    )
    quota = asyncio.create_task(keeper.run())
    profiler = cProfile.Profile() if profile else None
    try:
        await consumer.prices.book(pool)  # loaded before the clock starts, as in a running billing
        before = sample()
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        while await consumer.step():
            pass
        if profiler is not None:
            profiler.disable()
        took = time.perf_counter() - started
        return took, before, sample(), pstats.Stats(profiler) if profiler else None
    finally:
        quota.cancel()
        redis.close()
        await pool.close()


async def prepare(settings: Settings, log: Path, rows: int) -> tuple[World, int]:
    conn = await connect(settings)
    try:
        world = await seed(conn)
    finally:
        await conn.close()
    ids = await asyncio.to_thread(write_log, log, world, rows)
    await fill_journal(settings, world, ids)
    return world, len(ids)


async def check(settings: Settings) -> tuple[int, int]:
    conn = await connect(settings)
    try:
        rows = await conn.fetchval("SELECT count(*) FROM usage_records")
        left = await conn.fetchval("SELECT count(*) FROM usage_hours_dirty")
        return int(rows), int(left)
    finally:
        await conn.close()


def measure(rows: int, *, profile: bool) -> None:
    folder = Path(tempfile.mkdtemp(prefix="clbil-", dir="/tmp"))
    stack = Stack(plan(with_free_ports(Settings(data_dir=folder))), nodes=0)
    settings = stack.settings
    try:
        stack.data_dir.mkdir(parents=True, exist_ok=True)
        stack.start_postgres()
        stack.start_redis()
        asyncio.run(migrate_and_seed(settings, model="demo-llama"))
        log = folder / "access.log"
        asyncio.run(prepare(settings, log, rows))
        assert stack.postgres_child is not None and stack.redis is not None
        postgres, redis = stack.postgres_child.proc.pid, stack.redis.proc.pid
        me = psutil.Process()

        def sample() -> Sample:
            return cpu_of([me]), cpu_of(tree(postgres)), cpu_of([psutil.Process(redis)])

        took, before, after, stats = uvloop.run(
            consume(settings, log, sample=sample, profile=profile)
        )
        written, _ = asyncio.run(check(settings))
        print(
            f"{rows:,} access-log lines ({log.stat().st_size / 1e6:.1f} MB), "
            f"{written:,} usage rows written in {took:.2f} s: {written / took:,.0f} rows/s"
        )
        for name, b, a in zip(("consumer", "postgres", "redis"), before, after, strict=True):
            seconds = used(b, a)
            print(f"  {name:<9} {seconds:6.2f} CPU s, {seconds / written * 1e6:7.1f} µs per row")
        if stats is not None:
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(30)
    finally:
        stack.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.billing", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    measure(args.rows, profile=args.profile)


if __name__ == "__main__":
    main()
