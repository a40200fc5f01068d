"""Session fixtures: one real stack (Postgres, Redis, services, Envoy, two nodes) on free ports.

DB_HOST / REDIS_HOST in the environment make the stack use those servers instead of the
embedded ones, as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import openai
import pytest

from crosslogic import audit
from crosslogic.accounts import api_keys
from crosslogic.accounts.requests import KeySpec
from crosslogic.cli import main
from crosslogic.db.connection import connect
from crosslogic.extauthz.decision import KeyRecord
from crosslogic.settings import Settings, load, to_env
from crosslogic.stack import Stack, with_free_ports


def stack_settings(data_dir: Path) -> Settings:
    return with_free_ports(load(os.environ)).with_overrides(
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
        # the default 30 ms lets a busy 2-core CI box turn a slow Redis answer into an
        # outage (each process then limits alone): the exactness tests need Redis' answer
        ratelimit_redis_timeout=0.15,
        # short, so that tests can wait them out (tests/test_hostile_input.py)
        envoy_request_headers_timeout=1.0,
        envoy_request_timeout=3.0,
    )


@contextlib.contextmanager
def own_system(*, nodes: int, **overrides: Any) -> Iterator[Stack]:
    """A whole system of its own (the session's settings with ``overrides``), for tests that
    must not disturb the shared one; stopped and removed afterwards."""
    # short path: the embedded Postgres' Unix socket path must stay under ~107 bytes
    data_dir = Path(tempfile.mkdtemp(prefix="clt-", dir="/tmp"))
    running = Stack(stack_settings(data_dir).with_overrides(**overrides), nodes=nodes)
    try:
        running.start()
        yield running
    finally:
        running.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    with own_system(nodes=2) as running:
        yield running


def metric(stack: Stack, sample: str) -> float:
    """One sample of the control plane's /metrics (all processes summed), 0 if absent."""
    url = f"http://127.0.0.1:{stack.settings.prometheus_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def run_db(stack: Stack, query: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await connect(stack.settings)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def connect_and(stack: Stack, work: Any) -> Any:
    """Run ``work(conn)`` (a coroutine function) on a fresh connection to the stack's DB."""

    async def go() -> Any:
        conn = await connect(stack.settings)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


@dataclass(frozen=True)
class CreatedKey:
    api_key_id: str
    key_id: str
    plaintext: str  # shown once; only its hash is stored
    tenant_id: str
    environment_id: str


def new_key(stack: Stack, *, environment_id: str | None = None, **spec: Any) -> CreatedKey:
    """A key made the one (audited) way an operator makes one, in ``environment_id`` (default:
    the demo's); ``spec`` holds KeySpec's fields (name, allowed_models, rate_limit_rpm...)."""
    if environment_id is None:
        assert stack.demo is not None
        environment_id = stack.demo.environment_id

    async def go() -> CreatedKey:
        conn = await connect(stack.settings)
        try:
            async with conn.transaction():
                row = await api_keys.create(
                    conn, actor=audit.SYSTEM, environment_id=environment_id, spec=KeySpec(**spec)
                )
        finally:
            await conn.close()
        return CreatedKey(
            api_key_id=row["api_key_id"],
            key_id=row["key_id"],
            plaintext=row["key"],
            tenant_id=row["tenant_id"],
            environment_id=row["environment_id"],
        )

    return asyncio.run(go())


@pytest.fixture()
def client(stack: Stack) -> openai.OpenAI:
    assert stack.demo is not None
    return openai.OpenAI(base_url=stack.base_url, api_key=stack.demo.api_key, max_retries=0)


Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture()
def cli(stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    for name, value in to_env(stack.settings).items():
        monkeypatch.setenv(name, value)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def cli_ok(outcome: tuple[int, str, str]) -> Any:
    """The JSON a CLI command printed, after checking it succeeded."""
    code, out, err = outcome
    assert code == 0, err
    return json.loads(out)


def key_record(**changes: object) -> KeyRecord:
    """A KeyRecord for the pure tests: active everything, changed as asked."""
    base: dict[str, object] = dict(
        api_key_id="a",
        key_id="k",
        tenant_id="t",
        environment_id="e",
        key_status="active",
        tenant_status="active",
        environment_status="active",
        expires_at=None,
        allowed_models=None,
        rate_limit_rpm=None,
    )
    base.update(changes)
    return KeyRecord(**base)  # type: ignore[arg-type]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test shows the end of every process log of the systems it used: CI keeps
    nothing else once the temporary data directories are gone."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Stack):
            report.sections.append((f"process logs of {value.data_dir}", log_tails(value)))


def log_tails(stack: Stack, lines: int = 12) -> str:
    logs = sorted((stack.data_dir / "logs").glob("*.log"))
    return "\n".join(
        f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        for log in logs
    )
