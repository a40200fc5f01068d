"""Whole systems for the tests: the session's settings, and systems of their own."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crosslogic.plan import plan
from crosslogic.ports import with_free_ports
from crosslogic.settings import Settings, load
from crosslogic.stack import Stack
from crosslogic.supervisor import Child

MODEL = "demo-llama"  # the model the demo tenant may use and the stack's nodes serve


def stack_settings(data_dir: Path, **overrides: Any) -> Settings:
    """The tests' settings with ``overrides``, on free ports (blocks sized by the
    overrides: replicas and gateways on consecutive ports)."""
    settings = load(os.environ).with_overrides(
        data_dir=data_dir,
        access_log_path=None,
        extauthz_workers=2,
        ratelimit_workers=2,
        envoy_concurrency=2,
        key_last_used_flush=0.5,
        node_heartbeat_interval=0.5,
        node_heartbeat_timeout=3.0,
        xds_poll_interval=0.5,
        log_level="info",
        # the default 100 ms can still let a 2-core CI box, loaded by the whole suite, turn
        # a slow Redis answer into an outage (each process then limits alone): the
        # exactness tests need Redis' answer
        ratelimit_redis_timeout=0.15,
        # short, so that tests can wait them out (tests/test_hostile_input.py)
        envoy_request_headers_timeout=1.0,
        envoy_request_timeout=3.0,
    )
    return with_free_ports(settings.with_overrides(**overrides))


@contextlib.contextmanager
def own_system(*, nodes: int, **overrides: Any) -> Iterator[Stack]:
    """A whole system of its own (the session's settings with ``overrides``), for tests that
    must not disturb the shared one; stopped and removed afterwards."""
    # short path: the embedded Postgres' Unix socket path must stay under ~107 bytes
    data_dir = Path(tempfile.mkdtemp(prefix="clt-", dir="/tmp"))
    running = Stack(plan(stack_settings(data_dir, **overrides)), nodes=nodes)
    try:
        running.start()
        yield running
    finally:
        running.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def outage(stack: Stack, child: Child | None) -> None:
    """An outage of one child (``stack.redis``, ``stack.postgres_child``): killed, and the
    supervisor does not bring it back (``stack.start_redis()`` and the like do)."""
    assert child is not None, "not started by this stack"
    child.proc.kill()
    stack.supervisor.stop_child(child)


def stop_service(stack: Stack, name: str) -> int:
    """Stop every process of one service for good; returns how many there were (to start
    as many again with ``stack.start_service``)."""
    children = [c for c in stack.supervisor.children if c.name.startswith(f"{name}-")]
    for child in children:
        stack.supervisor.stop_child(child)
    return len(children)


def log_tails(stack: Stack, lines: int = 12) -> str:
    """The last ``lines`` of every process log of ``stack``."""
    return logs_in(stack.data_dir, lines)


def logs_in(data_dir: Path, lines: int = 15) -> str:
    """The last ``lines`` of every process log under ``data_dir`` (a failed `up`'s too: CI
    keeps nothing else)."""
    return "\n".join(
        f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        for log in sorted((data_dir / "logs").glob("*.log"))
    )
