"""The services' own latency, from their Prometheus histograms' growth during a run: at
saturation, and at half of it (open-loop pacing) against the seed's p99 budgets."""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench import targets
from bench.gateway import Gateway
from bench.histogram import Histogram, scrape
from bench.wrk import Load, WrkResult, run_wrk
from crosslogic.metrics import FLUSH_EVERY_S

AUTHZ_HISTOGRAM = "crosslogic_authz_check_seconds"
RATELIMIT_HISTOGRAM = "crosslogic_ratelimit_decision_seconds"
# what each histogram times, and its p99 budget in ms
MEASURED = (
    (AUTHZ_HISTOGRAM, "ext_authz check", targets.AUTHZ_P99_MS),
    (RATELIMIT_HISTOGRAM, "rate-limit decision", targets.RATELIMIT_P99_MS),
)


@dataclass(frozen=True)
class ServiceLatency:
    """Quantiles estimated from a histogram's growth during the measured run."""

    label: str
    histogram: Histogram
    budget_ms: float  # p99, at half of saturation

    def cell(self, q: float) -> str:
        value = self.histogram.quantile(q)
        return "n/a" if value is None else f"{value * 1000:.2f} ms"

    def budget(self) -> str:
        """The p99 against its budget: ``2.10 ms (budget < 2 ms: missed)``."""
        value = self.histogram.quantile(0.99)
        ok = value is not None and value * 1000 < self.budget_ms
        return f"{self.cell(0.99)} (budget < {self.budget_ms:g} ms: {targets.verdict(ok)})"


def grown(before: dict[str, Histogram], after: dict[str, Histogram]) -> list[ServiceLatency]:
    return [
        ServiceLatency(f"{text} (`{name}`)", after[name].minus(before[name]), budget)
        for name, text, budget in MEASURED
    ]


@dataclass(frozen=True)
class HalfLoad:
    """A run offered half of the saturation run's requests/s on a fixed schedule."""

    offered_rps: float
    result: WrkResult
    services: list[ServiceLatency]

    def lines(self, name: str) -> list[str]:
        r = self.result
        head = (
            f"({name}) at half of saturation: {self.offered_rps:,.0f} req/s offered, "
            f"{r.rps:,.0f} done, client p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms"
        )
        return [head] + [
            f"  {s.label}: p50 {s.cell(0.5)}, p99 {s.budget()} ({s.histogram.count:,.0f} samples)"
            for s in self.services
        ]


def half_load(gateway: Gateway, *, saturated_rps: float, load: Load) -> HalfLoad:
    """Paced with wrk's delay() hook (see post.lua): an open loop in C, cheap on the cores the
    system shares with it, where a Python generator would take a good part of one."""
    rate = max(1.0, saturated_rps / 2)
    before = scrape(gateway.metrics_url)
    result = run_wrk(
        gateway.url,
        load=load,
        duration_s=load.duration_s,
        authorization=f"Bearer {gateway.api_key}",
        rate=rate,
    )
    time.sleep(2 * FLUSH_EVERY_S)  # the services' last tallies reach /metrics
    return HalfLoad(rate, result, grown(before, scrape(gateway.metrics_url)))
