"""What the benchmark prints: per-target lines, comparisons and a README-ready markdown table."""

from __future__ import annotations

import os
from dataclasses import dataclass

from bench.histogram import Histogram
from bench.wrk import Load, WrkResult


@dataclass(frozen=True)
class Target:
    label: str
    result: WrkResult


@dataclass(frozen=True)
class ServiceLatency:
    """Quantiles estimated from a histogram's growth during the measured run."""

    label: str
    histogram: Histogram

    def cell(self, q: float) -> str:
        value = self.histogram.quantile(q)
        return "n/a" if value is None else f"{value * 1000:.2f} ms"


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
        f"{percent(rc.rps, rb.rps)} of plain Envoy",
        f"gateway added latency vs plain Envoy: p50 {rc.p50_ms - rb.p50_ms:+.2f} ms, "
        f"p99 {rc.p99_ms - rb.p99_ms:+.2f} ms",
    ]


def machine_note(load: Load, *, envoy_concurrency: int) -> str:
    cores = os.cpu_count() or 1
    return (
        f"wrk: {load.threads} threads, {load.connections} connections, "
        f"{load.duration_s} s per target after a {load.warmup_s} s warm-up; every Envoy "
        f"runs with --concurrency {envoy_concurrency}. One {cores}-core machine: the load "
        "generator, the Envoys, the Python services, PostgreSQL and Redis share those "
        "cores, so absolute numbers are lower than on separate machines."
    )


def versus_plain(target: Target, plain: Target) -> tuple[str, str, str]:
    r, b = target.result, plain.result
    return (
        percent(r.rps, b.rps),
        f"{r.p50_ms - b.p50_ms:+.2f} ms",
        f"{r.p99_ms - b.p99_ms:+.2f} ms",
    )


def markdown(a: Target, b: Target, gateway: GatewayRun, *, note: str) -> str:
    c = gateway.target
    rows = [
        "| target | req/s | p50 | p99 | req/s vs (a) | req/s vs (b) | p50 vs (b) | p99 vs (b) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t, vs_b in ((a, ("—", "—", "—")), (b, ("100%", "—", "—")), (c, versus_plain(c, b))):
        r = t.result
        rows.append(
            f"| {t.label} | {r.rps:,.0f} | {r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms | "
            f"{percent(r.rps, a.result.rps)} | {' | '.join(vs_b)} |"
        )
    rows += [
        "",
        "| inside the gateway (Prometheus histograms) | p50 | p99 | samples |",
        "| --- | ---: | ---: | ---: |",
    ]
    rows += [
        f"| {s.label} | {s.cell(0.5)} | {s.cell(0.99)} | {s.histogram.count:,.0f} |"
        for s in gateway.services
    ]
    rows += [
        "",
        f"Rate-limit calls that failed open during the measured run: "
        f"{gateway.ratelimit_failed_open:,}. Billing: {gateway.billing.summary()}.",
        "",
        note,
    ]
    return "\n".join(rows)
