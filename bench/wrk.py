"""Running the ``wrk`` load generator with ``post.lua`` and reading its summary line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "post.lua"
_MARKER = "BENCH_RESULT "


class WrkError(RuntimeError):
    """wrk is missing, failed, or printed no summary."""


@dataclass(frozen=True)
class Load:
    """How hard to push: the same for every target so that results compare."""

    connections: int
    threads: int
    duration_s: int
    warmup_s: int


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    status_errors: int  # responses with status > 399 ("Non-2xx or 3xx" in wrk's report)
    socket_errors: int  # connect, read, write errors and timeouts
    p50_ms: float
    p99_ms: float
    mean_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise WrkError("wrk is not installed (apt-get install wrk)")
    return found


def parse_summary(output: str) -> WrkResult:
    lines = [line for line in output.splitlines() if line.startswith(_MARKER)]
    if not lines:
        raise WrkError(f"wrk printed no {_MARKER.strip()} line:\n{output[-2000:]}")
    raw = json.loads(lines[-1][len(_MARKER) :])
    return WrkResult(
        requests=int(raw["requests"]),
        duration_s=raw["duration_us"] / 1e6,
        status_errors=int(raw["status_errors"]),
        socket_errors=int(
            raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"]
        ),
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        mean_ms=raw["mean_us"] / 1000,
    )


def run_wrk(
    url: str,
    *,
    load: Load,
    duration_s: int,
    authorization: str | None = None,
    rate: float | None = None,
) -> WrkResult:
    """One wrk run of ``duration_s`` seconds against ``url`` at ``load``'s concurrency; with
    ``rate``, requests/s sent on a fixed schedule (post.lua's pacing) instead of as fast as
    the connections allow."""
    env = dict(os.environ)
    env.pop("BENCH_AUTHORIZATION", None)
    env.pop("BENCH_RATE_PER_THREAD", None)
    if authorization is not None:
        env["BENCH_AUTHORIZATION"] = authorization
    if rate is not None:
        env["BENCH_RATE_PER_THREAD"] = f"{rate / load.threads:.3f}"
    argv = [
        wrk_binary(),
        "--threads",
        str(load.threads),
        "--connections",
        str(load.connections),
        "--duration",
        f"{duration_s}s",
        "--timeout",
        "5s",
        "--latency",
        "--script",
        str(SCRIPT),
        url,
    ]
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, check=False, timeout=duration_s + 60
    )
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {done.stderr.strip()}")
    return parse_summary(done.stdout)


def measure(url: str, *, load: Load, authorization: str | None = None) -> WrkResult:
    """A warm-up run, discarded (none when ``warmup_s`` is 0), then the measured run."""
    if load.warmup_s > 0:
        run_wrk(url, load=load, duration_s=load.warmup_s, authorization=authorization)
    return run_wrk(url, load=load, duration_s=load.duration_s, authorization=authorization)
