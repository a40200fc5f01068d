"""Keeps the node known to the control plane: register, heartbeat, drain on the cloud's
interruption notice, deregister on shutdown.

Admin API contract (served by the control plane):

* ``POST /admin/nodes/register`` with the registration token ``{node_id, model, address,
  port, provider, region, zone, gpu_type, gpu_count, capacity, spot}`` -> ``{"node_id": str,
  "node_credential": str, "heartbeat_interval_s": float}``
* ``POST /admin/nodes/{node_id}/heartbeat`` with the node credential ``{requests_running,
  requests_waiting, kv_cache_usage_perc}`` -> 200; 404 (the control plane forgot us) or 401
  (our credential is no longer valid) mean: register again; 410 means an operator removed
  us (or our drain ended): never register again on our own.
* ``POST /admin/nodes/{node_id}/drain`` with the node credential -> 200, once, on the
  cloud's interruption notice (a spot instance about to be reclaimed): no new requests,
  in-flight ones complete, then the control plane removes the node (410 on a heartbeat).
* ``POST /admin/nodes/{node_id}/deregister`` with the node credential -> 200, best effort
  at shutdown.

The loop never gives up while the node may serve: an unreachable control plane (or a vLLM
whose /metrics does not answer yet) is retried with capped backoff, so nodes and control
plane can start in any order. Once removed, it only waits to be stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from crosslogic.agent.load import LoadUnavailable, NodeLoad

log = logging.getLogger(__name__)

_DEFAULT_HEARTBEAT_S = 2.0


@dataclass(frozen=True)
class RegistrationConfig:
    """Where the control plane is and how this node describes itself to it."""

    control_plane_url: str
    model: str
    address: str
    port: int
    node_id: str | None = None  # None: the control plane assigns one
    registration_token: str | None = None
    provider: str = "local"
    region: str = "local"
    zone: str = ""
    gpu_type: str = "simulated"
    gpu_count: int = 1
    capacity: int = 256  # max concurrent sequences (vLLM's max_num_seqs)
    spot: bool = False
    transport: str = "plain"  # how Envoy reaches the node: plain, tls, mtls
    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0
    request_timeout_s: float = 5.0
    deregister_timeout_s: float = 2.0


class AdminAPIError(Exception):
    """The control plane answered, but not with what the contract promises."""


class Removed(Exception):
    """The control plane removed this node (an operator, or the end of its drain)."""


@dataclass(frozen=True)
class Registered:
    node_id: str
    credential: str
    heartbeat_interval_s: float


def backoff_delay(attempt: int, *, initial: float, maximum: float) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): doubling, capped."""
    return min(maximum, initial * 2.0 ** min(attempt, 30))


class _AdminClient:
    """The admin API calls; translates HTTP outcomes into return values or AdminAPIError."""

    def __init__(self, session: aiohttp.ClientSession, config: RegistrationConfig) -> None:
        self._session = session
        self._config = config
        self._base = config.control_plane_url.rstrip("/") + "/admin/nodes"
        self._timeout = aiohttp.ClientTimeout(total=config.request_timeout_s)

    async def register(self, node_id: str | None) -> Registered:
        c = self._config
        payload = {
            "node_id": node_id,
            "model": c.model,
            "address": c.address,
            "port": c.port,
            "provider": c.provider,
            "region": c.region,
            "zone": c.zone,
            "gpu_type": c.gpu_type,
            "gpu_count": c.gpu_count,
            "capacity": c.capacity,
            "spot": c.spot,
        }
        if c.transport != "plain":  # older control planes know no transport (plain to them)
            payload["transport"] = c.transport
        status, body = await self._post(
            f"{self._base}/register", payload, secret=c.registration_token, limit=self._timeout
        )
        if status != 200 or not isinstance(body, dict):
            raise AdminAPIError(f"register answered HTTP {status}: {body!r}")
        assigned, credential = body.get("node_id"), body.get("node_credential")
        if not isinstance(assigned, str) or not assigned:
            raise AdminAPIError(f"register answered without a node_id: {body!r}")
        if not isinstance(credential, str) or not credential:
            raise AdminAPIError(f"register answered without a node_credential: {body!r}")
        interval = body.get("heartbeat_interval_s")
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            interval = _DEFAULT_HEARTBEAT_S
        return Registered(assigned, credential, float(interval))

    async def heartbeat(self, node: Registered, load: NodeLoad) -> bool:
        """True if the control plane still knows the node, False if it must register again;
        Removed if it must not."""
        payload = {
            "requests_running": load.requests_running,
            "requests_waiting": load.requests_waiting,
            "kv_cache_usage_perc": load.kv_cache_usage_perc,
        }
        status, body = await self._post(
            f"{self._base}/{node.node_id}/heartbeat",
            payload,
            secret=node.credential,
            limit=self._timeout,
        )
        if status in (401, 404):
            return False
        if status == 410:
            raise Removed(str(body))
        if status != 200:
            raise AdminAPIError(f"heartbeat answered HTTP {status}: {body!r}")
        return True

    async def drain(self, node: Registered) -> None:
        status, body = await self._post(
            f"{self._base}/{node.node_id}/drain", {}, secret=node.credential, limit=self._timeout
        )
        if status == 410:
            raise Removed(str(body))
        if status not in (200, 409):  # 409: no longer active, nothing to drain
            raise AdminAPIError(f"drain answered HTTP {status}: {body!r}")

    async def deregister(self, node: Registered) -> None:
        timeout = aiohttp.ClientTimeout(total=self._config.deregister_timeout_s)
        await self._post(
            f"{self._base}/{node.node_id}/deregister", {}, secret=node.credential, limit=timeout
        )

    async def _post(
        self,
        url: str,
        payload: dict[str, Any],
        *,
        secret: str | None,
        limit: aiohttp.ClientTimeout,
    ) -> tuple[int, object]:
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        async with self._session.post(
            url, json=payload, headers=headers, timeout=limit
        ) as response:
            try:
                body: object = await response.json(content_type=None)
            except ValueError:
                body = await response.text()
            return response.status, body


async def run_registration(
    config: RegistrationConfig,
    *,
    load: Callable[[], Awaitable[NodeLoad]],
    on_registered: Callable[[str], None] | None = None,
    interrupted: asyncio.Event | None = None,
    removed: asyncio.Event | None = None,
) -> None:
    """Register and heartbeat until cancelled; then deregister, best effort. Removed by
    the control plane, the node stops registering and waits to be cancelled.

    ``on_registered`` is called with the node id after every successful registration
    (the control plane may assign or change it). Once ``interrupted`` is set (the cloud's
    interruption notice), the node drains itself and keeps heartbeating its load until the
    control plane removes it; ``removed`` is set then. The node registers only once ``load``
    answers (vLLM is up), and a heartbeat is skipped while it does not.
    """
    wanted = config.node_id  # the id we ask for; the control plane's answer wins
    registered: Registered | None = None
    drained = False  # whether this registration asked to be drained
    failures = 0
    async with aiohttp.ClientSession() as session:
        client = _AdminClient(session, config)
        try:
            while True:
                try:
                    if registered is None:
                        await load()  # vLLM serves: only then may it get traffic
                        registered = await client.register(wanted)
                        wanted = registered.node_id
                        failures = 0
                        log.info(
                            "registered node %s with %s",
                            registered.node_id,
                            config.control_plane_url,
                        )
                        drained = False
                        if on_registered is not None:
                            on_registered(registered.node_id)
                    await _pause(
                        registered.heartbeat_interval_s, until=None if drained else interrupted
                    )
                    if interrupted is not None and interrupted.is_set() and not drained:
                        await client.drain(registered)
                        drained = True
                        log.warning("node %s: interruption notice; draining", registered.node_id)
                    if not await client.heartbeat(registered, await load()):
                        log.warning(
                            "control plane forgot node %s; registering again", registered.node_id
                        )
                        registered = None
                        continue
                    failures = 0
                except Removed as why:
                    log.error(
                        "node %s was removed by the control plane; not registering again: %s",
                        registered.node_id if registered else wanted,
                        why,
                    )
                    registered = None  # nothing to deregister
                    if removed is not None:
                        removed.set()
                    await asyncio.Event().wait()  # serve nobody until stopped
                except (aiohttp.ClientError, TimeoutError, AdminAPIError, LoadUnavailable) as exc:
                    delay = backoff_delay(
                        failures, initial=config.retry_initial_s, maximum=config.retry_max_s
                    )
                    failures += 1
                    log.warning(
                        "%s unavailable (%s); retrying in %.1fs",
                        "vLLM" if isinstance(exc, LoadUnavailable) else config.control_plane_url,
                        _describe(exc),
                        delay,
                    )
                    await asyncio.sleep(delay)
        finally:
            if registered is not None:
                await _deregister(client, registered)


async def _pause(seconds: float, *, until: asyncio.Event | None) -> None:
    """Sleep ``seconds``, or less if ``until`` is set meanwhile."""
    if until is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(until.wait(), seconds)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def _deregister(client: _AdminClient, node: Registered) -> None:
    try:
        await client.deregister(node)
        log.info("deregistered node %s", node.node_id)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("could not deregister node %s: %s", node.node_id, _describe(exc))
