"""Prometheus plumbing shared by every service process.

Services run as several processes, so metrics use prometheus_client's multiprocess mode: each
process writes its samples under ``PROMETHEUS_MULTIPROC_DIR`` (set by the supervisor) and the
admin API serves the sum. Metric objects are created against a registry handed in, never at
import time.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import os
import shutil
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiproc_dir(path: Path) -> None:
    """Start from an empty directory: stale files from a previous run would be summed in."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def mark_process_dead(pid: int, *, env: dict[str, str]) -> None:
    """Drop a dead process's "live" gauges (a restarted service must not be counted twice);
    ``env`` is the dead process's environment, which names its metrics directory."""
    directory = env.get(MULTIPROC_ENV)
    if directory:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def exposition() -> bytes:
    """The text exposition of every process's metrics (or this process's alone)."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY)


# Request-path metrics are tallied in process and added to prometheus_client's every
# FLUSH_EVERY_S: in multiprocess mode each inc/observe takes a lock and writes an mmap
# (~2.5 µs), five of them per request were 8-10% of ext_authz's CPU. The price: a value
# reaches /metrics up to FLUSH_EVERY_S late, and a killed process loses at most that much.
FLUSH_EVERY_S = 0.2


class _Batched:
    def __init__(self) -> None:
        self._flush_scheduled = False

    def _schedule(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            try:
                asyncio.get_running_loop().call_later(FLUSH_EVERY_S, self.flush)
            except RuntimeError:  # no event loop (a test, a command): added at once
                self.flush()

    def flush(self) -> None:
        self._flush_scheduled = False
        self._add()

    def _add(self) -> None:
        raise NotImplementedError


class Tally(_Batched):
    """A Counter's increments, by label values, added to it in batches."""

    def __init__(self, counter: Counter) -> None:
        super().__init__()
        self._counter = counter
        self._counts: collections.Counter[tuple[str, ...]] = collections.Counter()

    def inc(self, *labels: str) -> None:
        self._counts[labels] += 1
        self._schedule()

    def _add(self) -> None:
        counts, self._counts = self._counts, collections.Counter()
        for labels, n in counts.items():
            (self._counter.labels(*labels) if labels else self._counter).inc(n)


class Timings(_Batched):
    """A Histogram's observations (without labels), added to it in batches: the sum and the
    count per bucket, as Histogram.observe would have added them one by one."""

    def __init__(self, histogram: Histogram) -> None:
        super().__init__()
        self._histogram = histogram
        # prometheus_client's own fields (pinned in constraints.txt; tests/test_metrics.py
        # holds the exposition equal to observe's)
        self._bounds: list[float] = histogram._upper_bounds
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds
        self._schedule()

    def _add(self) -> None:
        counts, total = self._counts, self._sum
        self._counts, self._sum = [0] * len(self._bounds), 0.0
        if any(counts):
            self._histogram._sum.inc(total)
            for bucket, n in zip(self._histogram._buckets, counts, strict=True):
                if n:
                    bucket.inc(n)
