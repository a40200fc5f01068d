"""The agent's drain sequence in process, against a fake control plane and a fake vLLM:
Kubernetes' SIGTERM drains at once, and the agent deregisters and ends when the grace period
is over; an idle node is removed by the control plane and the agent ends without waiting."""

from __future__ import annotations

import asyncio
import os
import signal

from aiohttp import web

from crosslogic.agent.registration import RegistrationConfig
from crosslogic.agent.runner import AgentConfig, run_agent
from crosslogic.ports import free_port
from tests.support.control_plane_double import FakeControlPlane

METRICS = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{model_name="m"}} {running}
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{model_name="m"}} 0
"""


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def _kubernetes_agent(cp: FakeControlPlane, *, running: int, grace_s: float) -> float:
    """Run an agent on "kubernetes" beside a vLLM with ``running`` requests; SIGTERM it once
    it heartbeats; returns how long it took to end."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=METRICS.format(running=running))

    vllm = web.Application()
    vllm.router.add_get("/metrics", metrics)
    cp_runner, cp_url = await _serve(cp.app())
    vllm_runner, vllm_url = await _serve(vllm)
    config = AgentConfig(
        registration=RegistrationConfig(
            control_plane_url=cp_url,
            model="m",
            address="127.0.0.1",
            port=1234,
            node_id="pod-1",
            registration_token="clrt_t",
        ),
        vllm_url=vllm_url,
        cloud="kubernetes",
        grace_period_s=grace_s,
    )
    agent = asyncio.create_task(run_agent(config))
    try:
        await asyncio.wait_for(cp.enough.wait(), timeout=10)  # registered and beating
        loop = asyncio.get_running_loop()
        started = loop.time()
        os.kill(os.getpid(), signal.SIGTERM)  # the agent's handler takes it: the kubelet's
        await asyncio.wait_for(agent, timeout=10)
        return loop.time() - started
    finally:
        agent.cancel()
        await cp_runner.cleanup()
        await vllm_runner.cleanup()


def test_sigterm_on_kubernetes_drains_and_deregisters_after_the_grace_period() -> None:
    cp = FakeControlPlane()  # never removes the node: requests keep running
    took = asyncio.run(_kubernetes_agent(cp, running=3, grace_s=0.5))
    paths = cp.paths()
    assert paths.count("/admin/nodes/pod-1/drain") == 1
    drained_at = paths.index("/admin/nodes/pod-1/drain")
    assert "/admin/nodes/pod-1/heartbeat" in paths[drained_at:]  # still reporting its load
    assert paths[-1] == "/admin/nodes/pod-1/deregister"
    assert took >= 0.5  # it waited out the grace period for the running requests
    beat = next(body for path, body, _ in cp.calls if path.endswith("/heartbeat"))
    assert beat == {"requests_running": 3, "requests_waiting": 0, "kv_cache_usage_perc": 0.0}


class _RemovesWhenIdle(FakeControlPlane):
    """Ends a drain at the next heartbeat, as the real one does when no request runs."""

    async def _node_action(self, request: web.Request) -> web.Response:
        if request.match_info["action"] == "drain":
            self.remove_after_heartbeats = self.heartbeats + 1
        return await super()._node_action(request)


def test_sigterm_on_an_idle_kubernetes_node_ends_when_the_control_plane_removes_it() -> None:
    cp = _RemovesWhenIdle()
    # a grace period far longer than the agent is given to end (10 s): removal ends it
    asyncio.run(_kubernetes_agent(cp, running=0, grace_s=300))
    paths = cp.paths()
    assert paths.count("/admin/nodes/pod-1/drain") == 1
    assert paths[-1] == "/admin/nodes/pod-1/heartbeat"  # removed (410): nothing to deregister
