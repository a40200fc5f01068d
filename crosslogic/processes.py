"""The commands and environment of a stack's processes other than its services."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from crosslogic.metrics import MULTIPROC_ENV
from crosslogic.settings import Settings, to_env


def child_env(settings: Settings, *, metrics_dir: Path) -> dict[str, str]:
    """Our environment with ``settings`` in it: every child loads exactly these."""
    env = dict(os.environ)
    env.update(to_env(settings))
    env[MULTIPROC_ENV] = str(metrics_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# what a node is never given: it registers with NODE_REGISTRATION_TOKEN and acts with the
# credential registering returns
_NOT_FOR_NODES = ("ADMIN_TOKEN", "DB_PASSWORD", "REDIS_PASSWORD", "STRIPE_SECRET_KEY")


def node_env(settings: Settings, *, metrics_dir: Path) -> dict[str, str]:
    """A simulated node's environment: ``child_env`` without the control plane's secrets, and
    without the control plane's metrics directory: a node serves its own ``/metrics`` (its
    ``vllm:`` series would otherwise be summed into the control plane's)."""
    env = child_env(settings, metrics_dir=metrics_dir)
    for name in (*_NOT_FOR_NODES, MULTIPROC_ENV):
        env.pop(name, None)
    return env


def envoy_binary() -> str:
    beside = Path(sys.executable).parent / "envoy"
    return str(beside) if beside.exists() else "envoy"


def envoy_argv(settings: Settings, *, config: Path) -> list[str]:
    return [
        envoy_binary(),
        "-c",
        str(config),
        "--concurrency",
        str(settings.workers(settings.envoy_concurrency)),
        "--disable-hot-restart",
        # usage reaches billing in 0.5 s, not the 10 s default; what a killed Envoy had not
        # flushed is recovered from the admission journal
        "--file-flush-interval-msec",
        str(max(1, round(settings.envoy_log_flush_interval * 1000))),
        "--log-level",
        "warning",
    ]


def node_argv(
    *, node_id: str, model: str, control_plane: str, extra: tuple[str, ...] = ()
) -> list[str]:
    """A simulated GPU node registered with ``control_plane``; ``extra``: more of
    ``crosslogic node``'s options (pacing, say)."""
    return [
        sys.executable,
        "-m",
        "crosslogic",
        "node",
        "--port",
        "0",
        "--model",
        model,
        "--node-id",
        node_id,
        "--control-plane",
        control_plane,
        *extra,
    ]
