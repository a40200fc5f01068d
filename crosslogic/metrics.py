"""Prometheus plumbing shared by every service process.

Services run as several processes, so metrics use prometheus_client's multiprocess mode: each
process writes its samples under ``PROMETHEUS_MULTIPROC_DIR`` (set by the supervisor) and the
admin API serves the sum. Metric objects are created against a registry handed in, never at
import time.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest, multiprocess

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
