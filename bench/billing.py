"""``python -m bench.billing [--rows N] [--rate R] [--profile]``: billing's own ceiling, the
access-log consumer alone, and its CPU per usage row.

An embedded PostgreSQL and Redis (the stack's own, started as ``crosslogic up`` starts them,
nothing else) get accounts and N access-log lines as Envoy writes them, each admission in
the journal as ext_authz writes it (tests/support/access_log.py: the accounts, the mix of
lines). The real :class:`AccessLogConsumer` runs with the settler, the journal and the quota
keeper, as billing runs it, in this process.

- Default, the ceiling: the N lines are in the file before the consumer starts; it consumes
  them as fast as it can (4 MB batches).
- ``--rate R``: R lines a second are appended every 0.5 s (Envoy's flush interval), the
  consumer polls as in billing: the cost per row at that rate, batches as large as it makes.

Printed: rows/s, and CPU seconds per row of the consumer's process (the appending thread's
own CPU taken out), of PostgreSQL (every backend and helper process) and of Redis (psutil).
``--profile``: the consumer under cProfile, its top functions (slower: for where, not how
fast). Indicative figures: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import pstats
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import uvloop
from prometheus_client import CollectorRegistry

from crosslogic.billing.consumer import AccessLogConsumer, BillingMetrics
from crosslogic.billing.quota_store import QuotaKeeper
from crosslogic.billing.settlement import TokenSettler
from crosslogic.db.connection import connect, create_pool
from crosslogic.journal.store import JournalStore
from crosslogic.plan import plan
from crosslogic.ports import with_free_ports
from crosslogic.redis_client import open_redis
from crosslogic.seeding import migrate_and_seed
from crosslogic.settings import Settings
from crosslogic.stack import Stack
from tests.support import access_log  # shared with the consumer's tests

FLUSH_EVERY_S = 0.5  # ENVOY_LOG_FLUSH_INTERVAL's default

# CPU seconds by pid: of the consumer's process, of PostgreSQL's, of Redis'
Sample = tuple[dict[int, float], dict[int, float], dict[int, float]]


def cpu_of(processes: list[psutil.Process]) -> dict[int, float]:
    seconds = {}
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            seconds[proc.pid] = times.user + times.system
    return seconds


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two samples (a process started meanwhile counts from zero)."""
    return sum(after[pid] - before.get(pid, 0.0) for pid in after)


class Appender(threading.Thread):
    """Appends ``chunks`` to the log one per ``FLUSH_EVERY_S``, as Envoy flushes it."""

    def __init__(self, log: Path, chunks: list[bytes]) -> None:
        super().__init__(name="appender", daemon=True)
        self.log, self.chunks = log, chunks
        self.cpu_s = 0.0  # this thread's own CPU, not the consumer's

    def run(self) -> None:
        started = time.monotonic()
        with self.log.open("ab") as f:
            for n, chunk in enumerate(self.chunks):
                time.sleep(max(0.0, started + n * FLUSH_EVERY_S - time.monotonic()))
                f.write(chunk)
                f.flush()
        self.cpu_s = time.thread_time()


async def caught_up(consumer: AccessLogConsumer, size: int) -> None:
    while True:  # polled: the consumer has no event to wait on
        if consumer.committed is not None and consumer.committed.offset >= size:
            return
        await asyncio.sleep(0.05)


async def consume(
    settings: Settings,
    log: Path,
    *,
    size: int,
    chunks: list[bytes] | None,
    sample: Callable[[], Sample],
    profile: bool,
) -> tuple[float, float, Sample, Sample, pstats.Stats | None]:
    """Runs the consumer until ``size`` bytes are consumed (``chunks``: appended meanwhile); returns
    the seconds it took, the appender's CPU, and CPU samples before and after (taken while
    the pool's backends are alive)."""
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
    tasks = [asyncio.create_task(keeper.run())]
    profiler = cProfile.Profile() if profile else None
    appender = Appender(log, chunks or [])
    try:
        await consumer.prices.book(pool)  # loaded before the clock starts, as in billing
        before = sample()
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        if chunks is None:
            while await consumer.step():
                pass
        else:
            appender.start()
            tasks.append(asyncio.create_task(consumer.run()))
            await caught_up(consumer, size)
            await asyncio.to_thread(appender.join)
        if profiler is not None:
            profiler.disable()
        took = time.perf_counter() - started
        stats = pstats.Stats(profiler) if profiler else None
        return took, appender.cpu_s, before, sample(), stats
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        redis.close()
        await pool.close()


async def prepare(settings: Settings, rows: int, *, rate: int | None) -> list[bytes]:
    """Accounts, journal entries and the lines: in one chunk (``rate`` None), or in chunks of
    ``rate`` x ``FLUSH_EVERY_S`` lines."""
    conn = await connect(settings)
    try:
        world = await access_log.seed(conn)
    finally:
        await conn.close()
    lines = access_log.entries(world, rows)
    redis = open_redis(settings, timeout=5.0)
    try:
        await access_log.journal(redis, world, lines)
    finally:
        redis.close()
    if rate is None:
        return [access_log.encoded(lines)]
    per_flush = max(1, round(rate * FLUSH_EVERY_S))
    return [access_log.encoded(lines[i : i + per_flush]) for i in range(0, rows, per_flush)]


async def written(settings: Settings) -> int:
    conn = await connect(settings)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM usage_records"))
    finally:
        await conn.close()


def measure(rows: int, *, rate: int | None, profile: bool) -> None:
    folder = Path(tempfile.mkdtemp(prefix="clbil-", dir="/tmp"))
    stack = Stack(plan(with_free_ports(Settings(data_dir=folder))), nodes=0)
    settings = stack.settings
    try:
        stack.data_dir.mkdir(parents=True, exist_ok=True)
        stack.start_postgres()
        stack.start_redis()
        asyncio.run(migrate_and_seed(settings, model="demo-llama"))
        log = folder / "access.log"
        chunks = asyncio.run(prepare(settings, rows, rate=rate))
        log.write_bytes(b"" if rate else chunks[0])
        size = sum(len(c) for c in chunks)
        assert stack.postgres_child is not None and stack.redis is not None
        postgres, redis = stack.postgres_child.proc.pid, stack.redis.proc.pid
        me = psutil.Process()

        def sample() -> Sample:
            return cpu_of([me]), cpu_of(tree(postgres)), cpu_of([psutil.Process(redis)])

        took, appending, before, after, stats = uvloop.run(
            consume(
                settings,
                log,
                size=size,
                chunks=chunks if rate else None,
                sample=sample,
                profile=profile,
            )
        )
        count = asyncio.run(written(settings))
        how = "as fast as it can" if rate is None else f"appended at {rate:,} lines/s"
        print(
            f"{rows:,} access-log lines ({log.stat().st_size / 1e6:.1f} MB) {how}: "
            f"{count:,} usage rows written in {took:.2f} s, {count / took:,.0f} rows/s"
        )
        for name, b, a in zip(("consumer", "postgres", "redis"), before, after, strict=True):
            seconds = used(b, a) - (appending if name == "consumer" else 0.0)
            print(f"  {name:<9} {seconds:6.2f} CPU s, {seconds / count * 1e6:6.1f} µs per row")
        if stats is not None:
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(30)
    finally:
        stack.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.billing", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=None, help="lines appended per second")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    measure(args.rows, rate=args.rate, profile=args.profile)


if __name__ == "__main__":
    main()
