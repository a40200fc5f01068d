"""``python -m bench.aggregation [--rows N]``: how long aggregating one hour of N usage rows
(default a million) takes, in a scratch PostgreSQL of its own (pgserver, in a temp dir).

The rows are made by SQL (``generate_series``) in one hour, spread over 10 tenants, 3
regions and 2 environments each, so the hour has 60 groups; the insert's time (with the
triggers that mark the hour) is printed too. Then the hour is aggregated from nothing, and
once more with nothing changed (the idempotent re-run). Figures, not an assertion.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from crosslogic.billing import aggregation
from crosslogic.db.migrate import migrate

HOUR = datetime(2026, 1, 1, 12, tzinfo=UTC)
TENANTS = 10

_ROWS = """
INSERT INTO usage_records (request_id, tenant_id, environment_id, api_key_id, model_id,
    endpoint, prompt_tokens, completion_tokens, cost_usd, status_code, started_at,
    duration_ms, region_code)
SELECT 'bench-' || i, k.tenant_id, k.environment_id, k.id, $1, '/v1/chat/completions',
       50 + i % 200, 100 + i % 500, (50 + i % 200) * 0.0000001 + (100 + i % 500) * 0.0000003,
       200, $2::timestamptz + (i % 3600000) * interval '1 millisecond', 20,
       (ARRAY['us-east', 'eu-west', NULL])[1 + i % 3]
FROM generate_series(1, $3) AS i
JOIN LATERAL (SELECT * FROM keys WHERE n = i % $4) AS k ON true
"""


async def seed(conn: asyncpg.Connection) -> int:
    model = await conn.fetchval("INSERT INTO models (name) VALUES ('bench-model') RETURNING id")
    await conn.execute(
        "CREATE TEMP TABLE keys (n int, id uuid, tenant_id uuid, environment_id uuid)"
    )
    for n in range(TENANTS * 2):
        tenant = await conn.fetchval(
            "INSERT INTO tenants (name) VALUES ($1) ON CONFLICT (name) DO UPDATE SET name = $1 "
            "RETURNING id",
            f"bench-{n // 2}",
        )
        env = await conn.fetchval(
            "INSERT INTO environments (tenant_id, name) VALUES ($1, $2) RETURNING id",
            tenant,
            f"env{n % 2}",
        )
        key = await conn.fetchval(
            "INSERT INTO api_keys (key_id, key_hash, tenant_id, environment_id) "
            "VALUES ($1, sha256(convert_to($1, 'UTF8')), $2, $3) RETURNING id",
            f"bench{n:04d}",
            tenant,
            env,
        )
        await conn.execute("INSERT INTO keys VALUES ($1, $2, $3, $4)", n, key, tenant, env)
    return int(model)


async def measure(dsn: str, rows: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        model = await seed(conn)
        started = time.perf_counter()
        await conn.execute(_ROWS, model, HOUR, rows, TENANTS * 2, timeout=3600)
        inserted = time.perf_counter() - started
        await conn.execute("ANALYZE usage_records")
        print(f"inserted {rows:,} usage rows in {inserted:.1f} s ({rows / inserted:,.0f}/s)")
        for label in ("aggregated", "re-aggregated (nothing changed)"):
            started = time.perf_counter()
            result = await aggregation.aggregate_hour(conn, HOUR)
            took = time.perf_counter() - started
            print(
                f"{label} one hour of {rows:,} rows in {took:.2f} s: "
                f"{result.groups} groups, {result.changed} written, clean={result.clean}"
            )
        total = await conn.fetchval(
            "SELECT sum(request_count) FROM usage_hourly WHERE hour = $1", HOUR
        )
        assert total == rows, (total, rows)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.aggregation", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    import pgserver

    folder = Path(tempfile.mkdtemp(prefix="clagg-", dir="/tmp"))
    server = pgserver.get_server(str(folder), cleanup_mode="stop")
    try:
        server.psql("CREATE DATABASE bench;")
        asyncio.run(measure(server.get_uri("bench"), args.rows))
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
