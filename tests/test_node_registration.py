"""The simulated GPU node's registration with a (fake) control plane: retries,
re-registration, heartbeats, deregistration, and its command line."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from crosslogic.agent.load import NodeLoad
from crosslogic.agent.registration import RegistrationConfig, backoff_delay, run_registration
from crosslogic.node.main import run
from crosslogic.ports import free_port
from tests.support.control_plane_double import FakeControlPlane
from tests.support.serving import http_call, serving
from tests.support.system import MODEL
from tests.support.waiting import wait_until


def _constant(load: NodeLoad) -> Callable[[], Awaitable[NodeLoad]]:
    async def read() -> NodeLoad:
        return load

    return read


def _registration_config(url: str, **overrides: Any) -> RegistrationConfig:
    values: dict[str, Any] = {
        "control_plane_url": url,
        "model": MODEL,
        "address": "127.0.0.1",
        "port": 1234,
        "retry_initial_s": 0.01,
        "retry_max_s": 0.02,
        **overrides,
    }
    return RegistrationConfig(**values)


async def _register_for_a_while(
    config: RegistrationConfig, *, cp: FakeControlPlane | None = None, linger: float = 0.0
) -> list[str]:
    """Run the loop until ``cp`` saw enough heartbeats (or briefly, without one), and
    ``linger`` seconds more."""
    registered: list[str] = []
    runner: web.AppRunner | None = None
    if cp is not None:
        runner = web.AppRunner(cp.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", config.port)
        await site.start()
    load = NodeLoad(requests_running=2, requests_waiting=1, kv_cache_usage_perc=0.5)
    task = asyncio.create_task(
        run_registration(config, load=_constant(load), on_registered=registered.append)
    )
    if cp is None:
        await asyncio.sleep(0.1)  # a while of retrying (every 10-20 ms) with nobody answering
    else:
        await asyncio.wait_for(cp.enough.wait(), timeout=3)
    await asyncio.sleep(linger)  # time for calls that must not come (10 heartbeat intervals)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    if runner is not None:
        await runner.cleanup()
    return registered


def test_registration_retries_reregisters_and_deregisters() -> None:
    cp = FakeControlPlane(refuse_registrations=2, forget_after_heartbeats=2, enough_heartbeats=4)
    port = free_port()
    config = _registration_config(
        f"http://127.0.0.1:{port}", port=port, node_id=None, registration_token="clrt_s3cret"
    )
    registered = asyncio.run(_register_for_a_while(config, cp=cp))

    paths = cp.paths()
    assert paths[:3] == ["/admin/nodes/register"] * 3  # two refusals, then success
    assert registered == ["assigned-1", "assigned-1"]  # again after the control plane forgot
    assert paths[-1] == "/admin/nodes/assigned-1/deregister"
    # the registration token registers; each registration's own credential does the rest
    for path, _, auth in cp.calls:
        if path == "/admin/nodes/register":
            assert auth == "Bearer clrt_s3cret"
        else:
            assert auth is not None and auth.startswith("Bearer clnc_"), (path, auth)
    beats = [auth for path, _, auth in cp.calls if path != "/admin/nodes/register"]
    assert beats[0] == "Bearer clnc_1" and beats[-1] == "Bearer clnc_2"  # after re-registering
    register_body = cp.calls[0][1]
    assert register_body == {
        "node_id": None,
        "model": MODEL,
        "address": "127.0.0.1",
        "port": port,
        "provider": "local",
        "region": "local",
        "zone": "",
        "gpu_type": "simulated",
        "gpu_count": 1,
        "capacity": 256,
        "spot": False,
    }
    # Once assigned, the id is kept when registering again.
    assert [b["node_id"] for p, b, _ in cp.calls if p == "/admin/nodes/register"][
        -1
    ] == "assigned-1"
    heartbeat = next(b for p, b, _ in cp.calls if p.endswith("/heartbeat"))
    assert heartbeat == {"requests_running": 2, "requests_waiting": 1, "kv_cache_usage_perc": 0.5}


def test_a_removed_node_stops_heartbeating_and_never_registers_again() -> None:
    cp = FakeControlPlane(remove_after_heartbeats=2, enough_heartbeats=10**6)
    port = free_port()
    config = _registration_config(f"http://127.0.0.1:{port}", port=port, node_id="spot-1")
    registered = asyncio.run(_register_for_a_while(config, cp=cp, linger=0.1))
    assert registered == ["spot-1"]
    # register, two heartbeats (the second answered 410), then nothing: no re-registration,
    # and no deregistration of a node the control plane already removed
    assert cp.paths() == ["/admin/nodes/register"] + ["/admin/nodes/spot-1/heartbeat"] * 2


def test_an_interrupted_node_drains_itself_with_its_own_credential() -> None:
    async def scenario() -> list[tuple[str, dict[str, Any], str | None]]:
        cp = FakeControlPlane(enough_heartbeats=1)
        port = free_port()
        runner = web.AppRunner(cp.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        config = _registration_config(f"http://127.0.0.1:{port}", port=port, node_id="spot-2")
        interrupted = asyncio.Event()
        load = NodeLoad(requests_running=1, requests_waiting=0, kv_cache_usage_perc=0.1)
        task = asyncio.create_task(
            run_registration(config, load=_constant(load), interrupted=interrupted)
        )
        try:
            await asyncio.wait_for(cp.enough.wait(), timeout=3)  # registered and beating
            cp.enough_heartbeats = 10**6
            cp.enough.clear()
            interrupted.set()
            cp.remove_after_heartbeats = cp.heartbeats + 2  # the drain ends two beats later
            await asyncio.wait_for(cp.enough.wait(), timeout=3)
            await asyncio.sleep(0.1)  # time for calls that must not come
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await runner.cleanup()
        return cp.calls

    calls = asyncio.run(scenario())
    paths = [path for path, _, _ in calls]
    assert paths.count("/admin/nodes/spot-2/drain") == 1
    after = paths[paths.index("/admin/nodes/spot-2/drain") + 1 :]
    # it keeps reporting its load while in-flight requests finish, until removed (410)
    assert after == ["/admin/nodes/spot-2/heartbeat"] * 2
    assert all(auth == "Bearer clnc_1" for path, _, auth in calls if path != paths[0])


def test_registration_survives_an_unreachable_control_plane() -> None:
    port = free_port()
    config = _registration_config(f"http://127.0.0.1:{port}", node_id="n1")
    registered = asyncio.run(_register_for_a_while(config))
    assert registered == []


def test_backoff_doubles_and_is_capped() -> None:
    delays = [backoff_delay(a, initial=0.5, maximum=4) for a in range(6)]
    assert delays == [0.5, 1, 2, 4, 4, 4]
    assert backoff_delay(10_000, initial=0.5, maximum=4) == 4


# --- main.py -----------------------------------------------------------------------------------


def test_main_rejects_bad_flags_with_an_exit_code() -> None:
    assert run(["--port", "99999"]) == 2
    assert run(["--ttft-ms", "-5"]) == 2
    assert run(["--control-plane", "not-a-url"]) == 2
    assert run(["--max-num-seqs", "0"]) == 2


def test_main_serves_registers_and_deregisters_on_sigterm() -> None:
    cp = FakeControlPlane()
    with serving(cp.app) as cp_url:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from crosslogic.node.main import run; sys.exit(run(sys.argv[1:]))",
                "--port=0",
                "--node-id=node-main",
                "--model=m1",
                f"--control-plane={cp_url}",
                "--log-level=warning",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "NODE_REGISTRATION_TOKEN": "clrt_tok"},
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            assert line.startswith("node node-main serving m1 on http://127.0.0.1:")
            url = line.rsplit(" ", 1)[1]
            assert http_call(f"{url}/v1/models").json()["data"][0]["id"] == "m1"
            wait_until(
                "a heartbeat", lambda: "/admin/nodes/node-main/heartbeat" in cp.paths(), timeout=3
            )
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
    assert cp.paths()[0] == "/admin/nodes/register"
    assert cp.calls[0][1]["port"] == int(url.rsplit(":", 1)[1])
    assert cp.paths()[-1] == "/admin/nodes/node-main/deregister"
    assert cp.calls[0][2] == "Bearer clrt_tok"
    assert all(auth == "Bearer clnc_1" for _, _, auth in cp.calls[1:])
