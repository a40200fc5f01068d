"""Running `crosslogic up` as a process of its own, as operators do, and reading what it
prints."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

from crosslogic.ports import free_ports

CROSSLOGIC = [sys.executable, "-m", "crosslogic"]


PORTS = (
    "XDS_PORT",
    "SERVER_PORT",
    "PROMETHEUS_PORT",
    "EXTAUTHZ_PORT",
    "RATELIMIT_PORT",
    "ENVOY_PORT",
    "ENVOY_ADMIN_PORT",
    "REDIS_PORT",
)


def up_environment(data_dir: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Free ports, a data dir and embedded databases for a `crosslogic up` of its own."""
    # XDS_PORT first: the second xDS process listens on the port after it, free too
    xds, *others = free_ports(len(PORTS), block=2)
    ports = {"XDS_PORT": xds, **dict(zip(PORTS[1:], others, strict=True))}
    env = {k: v for k, v in os.environ.items() if k not in ("DB_HOST", "REDIS_HOST")}
    env.update({k: str(v) for k, v in ports.items()})
    env.update(
        {
            "DATA_DIR": str(data_dir),
            "EXTAUTHZ_WORKERS": "1",
            "RATELIMIT_WORKERS": "1",
            "ENVOY_CONCURRENCY": "1",
            "NODE_HEARTBEAT_INTERVAL": "0.5",
        }
    )
    return ports, env


def printed_lines(output: Iterable[str], names: Iterable[str]) -> dict[str, str]:
    """The ``NAME=value`` lines among ``names`` and the ``curl`` line that `up` prints, read
    from its output until it says it runs (Ctrl-C)."""
    wanted, lines = set(names), {}
    for line in output:
        name, _, value = line.strip().partition("=")
        if name in wanted:
            lines[name] = value
        if line.startswith("curl "):
            lines["curl"] = line.strip()
        if "Ctrl-C" in line:
            break
    return lines
