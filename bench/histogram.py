"""Prometheus histograms from the admin API's text exposition, and quantiles estimated from them.

Counts are cumulative since the services started; the benchmark takes a snapshot before and
after the measured run and estimates quantiles from the difference.
"""

from __future__ import annotations

import math
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts by upper bound (the last bound is +Inf)."""

    buckets: tuple[tuple[float, float], ...]

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0

    def minus(self, earlier: Histogram) -> Histogram:
        before = dict(earlier.buckets)
        return Histogram(tuple((le, n - before.get(le, 0.0)) for le, n in self.buckets))

    def quantile(self, q: float) -> float | None:
        """Linear interpolation inside the bucket holding rank ``q * count``, like Prometheus'
        ``histogram_quantile``: a rank in the +Inf bucket gives the highest finite bound.
        None when the histogram is empty."""
        if self.count <= 0:
            return None
        rank = q * self.count
        lower, below = 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(le):
                    return lower
                inside = cumulative - below
                return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = le, cumulative
        return lower


def parse_histograms(text: str) -> dict[str, Histogram]:
    """Every histogram in an exposition, label sets summed per bucket bound."""
    out: dict[str, Histogram] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "histogram":
            continue
        sums: dict[float, float] = {}
        for sample in family.samples:
            if sample.name == f"{family.name}_bucket":
                le = float(sample.labels["le"])
                sums[le] = sums.get(le, 0.0) + sample.value
        out[family.name] = Histogram(tuple(sorted(sums.items())))
    return out


def scrape(url: str) -> dict[str, Histogram]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return parse_histograms(response.read().decode())
