"""What the benchmark prints: per-target lines, comparisons and a README-ready markdown table."""

from __future__ import annotations

import os
from dataclasses import dataclass

from bench import targets
from bench.costs import CpuUsage
from bench.services import ServiceLatency
from bench.wrk import Load, WrkResult


@dataclass(frozen=True)
class Target:
    label: str
    result: WrkResult


@dataclass(frozen=True)
class Billing:
    """usage_records rows of the benchmark key against the requests wrk completed.

    wrk counts only requests answered before it stops. The ones in flight then (at most one
    per connection per run) reached the node too and get a row; when the client hung up before
    the response went through the usage filter, that row has 0 tokens (flag DC)."""

    completed: int  # warm-up included
    in_flight: int  # at most this many more rows than completed requests
    recorded: int
    exact: int  # rows with the upstream's token counts (5 prompt + 16 completion)
    rows_per_s: float = 0.0  # usage rows billing wrote per second during the measured run
    lag_p50_s: float = 0.0  # the pipeline lag (oldest unconsumed log line) during that run
    lag_max_s: float = 0.0

    @property
    def consistent(self) -> bool:
        return self.completed <= self.exact <= self.recorded <= self.completed + self.in_flight

    def summary(self) -> str:
        return (
            f"{self.recorded:,} usage_records rows, {self.exact:,} of them with 5 + 16 tokens, "
            f"for {self.completed:,} requests wrk completed (warm-up included; up to "
            f"{self.in_flight:,} more rows come from requests cut off when wrk stopped); "
            f"during the load billing wrote {self.rows_per_s:,.0f} rows/s, its lag (the age of "
            f"the oldest log line not yet billed) p50 {self.lag_p50_s:.2f} s, "
            f"max {self.lag_max_s:.2f} s"
        )


@dataclass(frozen=True)
class GatewayRun:
    target: Target
    services: list[ServiceLatency]
    billing: Billing
    ratelimit_failed_open: int  # measured-run rate-limit calls that errored or timed out
    cpu: CpuUsage
    memory: dict[str, int]  # resident bytes after the run, by supervisor child name


def line(target: Target) -> str:
    r = target.result
    return (
        f"{target.label}: {r.rps:,.0f} req/s, p50 {r.p50_ms:.2f} ms, "
        f"p99 {r.p99_ms:.2f} ms ({r.requests:,} requests in {r.duration_s:.1f} s)"
    )


def percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "n/a"


def comparison(a: Target, b: Target, c: Target) -> list[str]:
    rc, rb = c.result, b.result
    return [
        f"gateway throughput: {percent(rc.rps, a.result.rps)} of the upstream alone, "
        f"{percent(rc.rps, rb.rps)} of plain Envoy {throughput_target(c, b)}",
        f"gateway added latency vs plain Envoy: p50 {rc.p50_ms - rb.p50_ms:+.2f} ms, "
        f"p99 {rc.p99_ms - rb.p99_ms:+.2f} ms",
    ]


def throughput_target(target: Target, plain: Target) -> str:
    ok = target.result.rps >= targets.THROUGHPUT_VS_PLAIN * plain.result.rps
    return f"(target >= {targets.THROUGHPUT_VS_PLAIN:.0%}: {targets.verdict(ok)})"


def machine_note(load: Load, *, envoy_concurrency: int) -> str:
    cores = os.cpu_count() or 1
    return (
        f"wrk: {load.threads} threads, {load.connections} connections, "
        f"{load.duration_s} s per target after a {load.warmup_s} s warm-up; every Envoy "
        f"runs with --concurrency {envoy_concurrency}. One {cores}-core machine: the load "
        "generator, the Envoys, the Python services, PostgreSQL and Redis share those "
        "cores, so absolute numbers are lower than on separate machines."
    )
