"""A main task that dies ends its process with an error; a signal ends it cleanly.

The unit tests drive crosslogic.lifecycle directly; the others run real service processes,
started as the stack starts them, in a database of their own whose schema is then pulled
from under them: the kind of error no loop retries (not an outage), so the loop dies.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from crosslogic.db.connection import connect
from crosslogic.lifecycle import TaskDied, run_until_signalled
from crosslogic.metrics import MULTIPROC_ENV
from crosslogic.ports import free_port, port_in_use
from crosslogic.probes import http_ok
from crosslogic.seeding import migrate_database
from crosslogic.services import service
from crosslogic.settings import Settings, to_env
from crosslogic.stack import Stack
from crosslogic.supervisor import ChildFailed, RestartPolicy, Supervisor
from tests.support.logs import records
from tests.support.waiting import wait_until


async def forever() -> None:
    await asyncio.Event().wait()


def test_a_task_that_raises_ends_the_wait_with_its_error_and_the_others_are_cancelled() -> None:
    async def go() -> tuple[TaskDied, asyncio.Task[None]]:
        async def broken() -> None:
            await asyncio.sleep(0.01)
            raise KeyError("gone")

        other = asyncio.create_task(forever(), name="other")
        with pytest.raises(TaskDied) as died:
            await run_until_signalled([other, asyncio.create_task(broken(), name="broken")])
        return died.value, other

    died, other = asyncio.run(go())
    assert "task broken ended: KeyError('gone')" in str(died)
    assert isinstance(died.__cause__, KeyError)
    assert other.cancelled()


def test_a_task_that_returns_is_an_error_too() -> None:
    async def go() -> None:
        async def done() -> None:
            return None

        await run_until_signalled([asyncio.create_task(done(), name="quitter")])

    with pytest.raises(TaskDied, match="task quitter ended: None"):
        asyncio.run(go())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_wait_cleanly_and_cancels_the_tasks(sig: signal.Signals) -> None:
    async def go() -> asyncio.Task[None]:
        task = asyncio.create_task(forever())
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), sig)
        await run_until_signalled([task])
        return task

    assert asyncio.run(go()).cancelled()


def execute(settings: Settings, sql: str) -> None:
    async def go() -> None:
        conn = await connect(settings)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


@pytest.fixture
def own_database(stack: Stack) -> Iterator[Settings]:
    """A database of its own, migrated, in the stack's PostgreSQL: its schema can be broken."""
    name = f"dying_{secrets.token_hex(4)}"
    try:
        execute(stack.settings, f"CREATE DATABASE {name}")
    except asyncpg.InsufficientPrivilegeError:
        pytest.skip("the database user may not create databases")
    settings = stack.settings.with_overrides(db_name=name)
    try:
        asyncio.run(migrate_database(settings))
        yield settings
    finally:
        execute(stack.settings, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# What each service reads in a loop, and the table taken from it.
LOOPS = [
    ("xds", "models", "follow-registry"),  # the node registry, every XDS_POLL_INTERVAL
    ("extauthz", "models", "catalog"),  # the model catalog, every 2 s
    ("ratelimit", "rate_limits", "limits"),  # the limit table, every 2 s
]


@pytest.mark.parametrize(("name", "table", "task"), LOOPS)
def test_a_service_whose_main_task_dies_exits_with_an_error(
    own_database: Settings, tmp_path: Path, name: str, table: str, task: str
) -> None:
    running = service(name)
    settings = own_database.with_overrides(
        **{port: free_port() for port in running.port_settings},
        xds_poll_interval=0.2,
        xds_replicas=1,  # one process, as started below
    )
    # not the stack's metrics directory: this process's gauges are not the stack's
    env = {**os.environ, **to_env(settings), MULTIPROC_ENV: str(tmp_path / "metrics")}
    (tmp_path / "metrics").mkdir()
    # started as the stack starts it, by a supervisor that gives up at the first exit
    supervisor = Supervisor(tmp_path / "logs", policy=RestartPolicy(max_restarts=0))
    try:
        child = supervisor.spawn(f"{name}-1", running.argv(), env=env)
        for port in running.ports(settings).values():
            wait_until(
                f"{name} to listen",
                lambda p=port: port_in_use(p),  # type: ignore[misc]
                check=supervisor.check,
            )
        execute(settings, f"ALTER TABLE {table} RENAME TO {table}_gone")
        with pytest.raises(ChildFailed) as failed:
            wait_until(f"{name} to exit", lambda: False, timeout=30, check=supervisor.check)
    finally:
        supervisor.stop_all()
    assert f"{name}-1 keeps crashing: 1 exits within 60s, the last with 1" in str(failed.value)
    assert child.log_path is not None
    said = child.log_path.read_text()
    assert any(
        (r["level"], r["logger"], r["pid"]) == ("ERROR", "crosslogic.lifecycle", child.proc.pid)
        and r["message"].startswith(f"{name} task {task} ended")
        for r in records(child.log_path)
    ), said
    assert "UndefinedTableError" in said, said


def test_a_service_run_on_its_own_serves_its_own_metrics(
    own_database: Settings, tmp_path: Path
) -> None:
    # a gateway's billing container: `crosslogic service billing`, no supervisor's metrics
    # directory, no admin process beside it to serve the sum
    settings = own_database.with_overrides(
        prometheus_port=free_port(),
        gateway_id="standalone",
        access_log_path=tmp_path / "access.log",
    )
    (tmp_path / "access.log").write_bytes(b"")
    env = {k: v for k, v in {**os.environ, **to_env(settings)}.items() if k != MULTIPROC_ENV}
    supervisor = Supervisor(tmp_path / "logs", policy=RestartPolicy(max_restarts=0))
    url = f"http://127.0.0.1:{settings.prometheus_port}/metrics"

    def served() -> str:
        if not http_ok(url):
            return ""
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    try:
        supervisor.spawn("billing-1", service("billing").argv(), env=env)
        # served from the start; billing's metrics appear once it has its pool
        wait_until(
            "billing's metrics on its own /metrics",
            lambda: "crosslogic_billing_access_log_lag_bytes" in served(),
            check=supervisor.check,
        )
    finally:
        supervisor.stop_all()
