"""Scale-out figures (``python -m bench.scale``; ``make bench`` runs it last).

One system in the scaled-out shape: a Redis Cluster of three masters, three gateways (an
Envoy and its billing consumer each) and two processes of every other service, in front of
the fixed-response upstream. wrk loads 1, then 2, then 3 gateways at once with the same
total connections; printed: requests/s for each (and the ratio to one gateway: on one box
the gateways share its cores, so this shows what a gateway costs, not what more machines
give), Redis commands per request (every master's count, billing's included), CPU time per
request of the system's processes (wrk and the upstream excluded), hence requests/s per core
and the cores 10,000 requests/s need. Last, the global layer's bound as measured: a global
limit below the offered load, and what the three gateways admitted against it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import redis

from bench import pipeline, resources
from bench.envoys import BaselineEnvoys
from bench.gateway import Gateway
from bench.wrk import Load, WrkResult, run_wrk
from crosslogic.db.connection import connect
from tests.support.redis_servers import Cluster, running_cluster  # shared with the tests

GLOBAL_RPS = 300  # the global limit of the bound's run: below what the gateways can do
# what gcra.lua, lease.lua and settle.lua call inside Redis; no client sends these itself
SCRIPTED = frozenset({"get", "set", "time"})
FAIL_OPEN = 'crosslogic_ratelimit_decisions_total{result="fail_open"}'


@dataclass(frozen=True)
class Round:
    gateways: int
    requests: int  # answered 2xx
    refused: int  # answered >= 400 (429 in the global bound's run)
    duration_s: float
    redis_commands: Counter[str]  # by command, those run inside scripts included
    cpu_s: float  # user + system time of the system's processes
    failed_open: int  # rate-limit decisions made without Redis (it answered too late)
    unlimited: int  # rate-limit calls Envoy gave up on (200 ms) and let through

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s

    def per_request(self, amount: float) -> float:
        return amount / max(1, self.requests + self.refused)

    def commands(self) -> str:
        """Redis commands per request: those the clients send (one EVALSHA and the journal's
        HSET per request, the rest batched) and those the scripts run inside Redis."""
        inside = sum(n for name, n in self.redis_commands.items() if name in SCRIPTED)
        sent = sum(self.redis_commands.values()) - inside
        most = [(name, n) for name, n in self.redis_commands.most_common() if name not in SCRIPTED]
        top = ", ".join(f"{name} {self.per_request(n):.2f}" for name, n in most[:3])
        return (
            f"Redis: {self.per_request(sent):.2f} commands sent per request ({top}), "
            f"{self.per_request(inside):.1f} run inside the scripts"
        )


def redis_commands(cluster: Cluster) -> Counter[str]:
    """Calls of every command so far, summed over the masters."""
    total: Counter[str] = Counter()
    for port in cluster.masters():
        with contextlib.closing(redis.Redis(port=port, socket_timeout=2)) as node:
            for name, stats in node.info("commandstats").items():
                total[name.removeprefix("cmdstat_")] += int(stats["calls"])
    return total


def system_pids(gateway: Gateway, cluster: Cluster) -> list[int]:
    """Every process of the stack (services, Envoys, Postgres) and the cluster's Redis: each
    counted with its descendants (Postgres' backends) by :mod:`bench.resources`."""
    redis_pids = [p.pid for p in cluster.processes.values() if p.poll() is None]
    return [*resources.supervised(gateway.stack.supervisor).values(), *redis_pids]


def load_at_once(urls: list[str], *, load: Load, authorization: str) -> list[WrkResult]:
    """One wrk per URL, all at the same time, sharing ``load``'s connections."""
    each = Load(
        connections=max(1, load.connections // len(urls)),
        threads=1,
        duration_s=load.duration_s,
        warmup_s=0,
    )
    with ThreadPoolExecutor(len(urls)) as pool:
        runs = [
            pool.submit(
                run_wrk, url, load=each, duration_s=load.duration_s, authorization=authorization
            )
            for url in urls
        ]
        return [run.result() for run in runs]


def measured_round(
    gateway: Gateway, cluster: Cluster, count: int, *, load: Load, authorization: str
) -> Round:
    urls = gateway.urls[:count]
    if load.warmup_s:
        load_at_once(
            urls, load=Load(load.connections, 1, load.warmup_s, 0), authorization=authorization
        )
    pids = system_pids(gateway, cluster)
    commands, cpu = redis_commands(cluster), resources.total_cpu_seconds(pids)
    failed_open = pipeline.sample(gateway.metrics_url, FAIL_OPEN)
    unlimited = gateway.ratelimit_failures()
    results = load_at_once(urls, load=load, authorization=authorization)
    gateway.wait_for_billing(0, timeout=3.0)  # billing's share of the work, done
    answered = sum(r.requests for r in results)
    refused = sum(r.status_errors for r in results)
    return Round(
        gateways=count,
        requests=answered - refused,
        refused=refused,
        duration_s=max(r.duration_s for r in results),
        redis_commands=redis_commands(cluster) - commands,
        cpu_s=resources.total_cpu_seconds(pids) - cpu,
        failed_open=int(pipeline.sample(gateway.metrics_url, FAIL_OPEN) - failed_open),
        unlimited=gateway.ratelimit_failures() - unlimited,
    )


async def set_global_limit(gateway: Gateway, rps: int) -> None:
    conn = await connect(gateway.stack.settings)
    try:
        await conn.execute(
            "UPDATE rate_limits SET requests_per_second = $1 WHERE scope = 'global'", rps
        )
        await conn.execute("SELECT pg_notify('crosslogic_limits', 'bench')")
    finally:
        await conn.close()


@contextlib.contextmanager
def scaled_system(work_dir: Path, *, envoy_concurrency: int) -> Iterator[tuple[Gateway, Cluster]]:
    envoys = BaselineEnvoys(work_dir, concurrency=envoy_concurrency)
    with running_cluster(replicas=0) as cluster:
        gateway = Gateway(
            work_dir / "stack",
            envoy_concurrency=envoy_concurrency,
            redis_cluster=cluster.seeds,
            gateways=3,
            admin_workers=2,
            extauthz_workers=2,
            ratelimit_workers=2,
            xds_replicas=2,
        )
        try:
            gateway.start(upstream_port=envoys.start_upstream())
            yield gateway, cluster
        finally:
            gateway.stop()
            envoys.stop()


def scale_figures(load: Load, *, envoy_concurrency: int) -> list[Round]:
    work_dir = Path(tempfile.mkdtemp(prefix="cls-", dir="/tmp"))
    try:
        with scaled_system(work_dir, envoy_concurrency=envoy_concurrency) as (gateway, cluster):
            auth = f"Bearer {gateway.api_key}"
            print(
                "scale-out: Redis Cluster of 3 masters, 3 gateways, 2 processes of every "
                f"other service; {load.connections} connections in all, {load.duration_s} s",
                flush=True,
            )
            rounds = [
                measured_round(gateway, cluster, n, load=load, authorization=auth)
                for n in (1, 2, 3)
            ]
            for r in rounds:
                cpu_per_request = r.per_request(r.cpu_s)
                print(
                    f"  {r.gateways} gateway(s): {r.rps:,.0f} req/s "
                    f"({r.rps / rounds[0].rps:.2f}x one gateway), {r.commands()}, "
                    f"{cpu_per_request * 1e3:.2f} ms CPU/request = "
                    f"{1 / cpu_per_request:,.0f} req/s per core, "
                    f"{10_000 * cpu_per_request:.1f} cores per 10,000 req/s",
                    flush=True,
                )
            asyncio.run(set_global_limit(gateway, GLOBAL_RPS))
            time.sleep(1.0)  # every rate-limit process has the new limit
            # offered below saturation (a few connections): an overloaded rate-limit service
            # answers Envoy too late and the request passes unlimited (counted below)
            gentle = Load(max(3, load.connections // 8), 1, 5, 0)
            bound = measured_round(gateway, cluster, 3, load=gentle, authorization=auth)
            allowed = GLOBAL_RPS * (bound.duration_s + 1)  # the rate plus one second's burst
            settings = gateway.stack.settings
            deciders = "ext_authz" if settings.ratelimit_at == "authz" else "rate-limit service"
            print(
                f"  global limit {GLOBAL_RPS} req/s across 3 gateways and 2 deciding processes "
                f"({deciders}), {bound.duration_s:.1f} s: admitted {bound.requests:,} "
                f"({bound.rps:,.0f}/s), refused {bound.refused:,}; the limit allows at most "
                f"{allowed:,.0f} (rate x time + one second's burst): "
                f"{100 * bound.requests / allowed:.1f}% of it. Of the admitted, "
                f"{bound.unlimited:,} passed unlimited (the rate-limit service answered Envoy "
                f"after 200 ms) and {bound.failed_open:,} were decided without Redis (it "
                "answered after RATELIMIT_REDIS_TIMEOUT: each process limits alone); "
                f"decided by the lease: {bound.requests - bound.unlimited - bound.failed_open:,}"
                f" = {100 * (bound.requests - bound.unlimited - bound.failed_open) / allowed:.1f}%"
                " of what the limit allows",
                flush=True,
            )
            return [*rounds, bound]
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--envoy-concurrency", type=int, default=1)
    args = parser.parse_args(argv)
    load = Load(args.connections, 1, args.duration, args.warmup)
    scale_figures(load, envoy_concurrency=args.envoy_concurrency)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
