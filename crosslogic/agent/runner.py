"""The node agent: keeps one vLLM server registered with the control plane, heartbeats
vLLM's own /metrics figures, drains the node at the cloud's interruption notice and
deregisters when stopped. ``crosslogic agent`` runs it beside vLLM on a GPU VM;
``crosslogic node`` runs it in process, pointed at its own /metrics."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from crosslogic.agent.load import NodeLoad, VllmMetrics
from crosslogic.agent.notices import MetadataError, Notice, Watcher, aws, azure, gcp
from crosslogic.agent.notices.signals import SignalWatcher
from crosslogic.agent.registration import RegistrationConfig, run_registration

log = logging.getLogger(__name__)

CLOUDS = ("aws", "gcp", "azure", "kubernetes", "none")
DEFAULT_METADATA_URLS = {"aws": aws.DEFAULT_URL, "gcp": gcp.DEFAULT_URL, "azure": azure.DEFAULT_URL}


@dataclass(frozen=True)
class AgentConfig:
    """What the agent keeps registered, and whose interruption notices it watches."""

    registration: RegistrationConfig
    vllm_url: str
    cloud: str = "none"
    metadata_url: str | None = None  # None: the cloud's own metadata endpoint
    poll_interval_s: float = 0.5
    drain_on_rebalance: bool = False  # AWS: drain at a rebalance recommendation already
    # after a final notice (Kubernetes' SIGTERM): the longest wait for in-flight requests;
    # under the pod's terminationGracePeriodSeconds (30 s by default)
    grace_period_s: float = 25.0

    def __post_init__(self) -> None:
        if self.cloud not in CLOUDS:
            raise ValueError(f"cloud must be one of {', '.join(CLOUDS)}, not {self.cloud!r}")
        if self.drain_on_rebalance and self.cloud != "aws":
            raise ValueError("drain_on_rebalance is for AWS only")
        if self.poll_interval_s <= 0 or self.grace_period_s < 0:
            raise ValueError("poll_interval_s must be positive and grace_period_s not negative")


def watchers_for(config: AgentConfig, session: aiohttp.ClientSession) -> list[Watcher]:
    """SIGUSR1 (an operator's or a test's notice, on every cloud) and the cloud's own."""
    watchers: list[Watcher] = [SignalWatcher(signal.SIGUSR1, source="SIGUSR1", final=False)]
    if config.cloud == "kubernetes":
        watchers.append(SignalWatcher(signal.SIGTERM, source="kubernetes", final=True))
    elif config.cloud != "none":
        base_url = config.metadata_url or DEFAULT_METADATA_URLS[config.cloud]
        interval_s = config.poll_interval_s
        if config.cloud == "aws":
            rebalance = config.drain_on_rebalance
            watchers.append(
                aws.AwsWatcher(
                    session, base_url=base_url, interval_s=interval_s, rebalance=rebalance
                )
            )
        else:
            kind = gcp.GcpWatcher if config.cloud == "gcp" else azure.AzureWatcher
            watchers.append(kind(session, base_url=base_url, interval_s=interval_s))
    return watchers


class RegistrationEnded(RuntimeError):
    """The registration loop ended, which it never should (a bug): the agent ends too."""


async def run_agent(
    config: AgentConfig, *, load: Callable[[], Awaitable[NodeLoad]] | None = None
) -> None:
    """Run until cancelled (then deregister, best effort), or, after a final notice, until
    the drain ended or the grace period passed.

    At the first notice the node drains at once and keeps heartbeating until the control
    plane removes it (its heartbeat reports no request running); then every notice heard is
    acknowledged where the cloud takes it. Watchers keep watching after a notice: a final
    one (the pod deleted) may follow another (an operator's SIGUSR1). ``load`` replaces
    reading vLLM's /metrics (the simulated node over TLS reads its figures in process).
    """
    interrupted, removed = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        read = load or VllmMetrics(session, vllm_url=config.vllm_url).read
        registration = asyncio.create_task(
            run_registration(
                config.registration, load=read, interrupted=interrupted, removed=removed
            ),
            name="registration",
        )
        pending = {
            asyncio.create_task(w.wait(), name="notice"): w for w in watchers_for(config, session)
        }
        drained = asyncio.create_task(removed.wait(), name="drained")
        unacknowledged: list[tuple[Notice, Watcher]] = []
        deadline: float | None = None  # once a final notice came
        try:
            while True:
                limit = None if deadline is None else max(0.0, deadline - loop.time())
                waited = {registration, *pending} | (set() if drained.done() else {drained})
                done, _ = await asyncio.wait(
                    waited, timeout=limit, return_when=asyncio.FIRST_COMPLETED
                )
                if registration in done:
                    raise _ended(registration)
                for task in [t for t in pending if t in done]:
                    notice = task.result()
                    unacknowledged.append((notice, pending.pop(task)))
                    log.warning("interruption notice from %s (%s)", notice.source, notice.reason)
                    interrupted.set()  # the registration loop drains at once
                    if notice.final and deadline is None:
                        deadline = loop.time() + config.grace_period_s
                if removed.is_set():
                    if drained in done:
                        log.info("the control plane removed the node")
                    for heard, watcher in unacknowledged:
                        await _acknowledge(watcher, heard)
                    unacknowledged.clear()
                if deadline is not None and (removed.is_set() or loop.time() >= deadline):
                    if not removed.is_set():
                        log.warning("grace period over with requests running; deregistering")
                    return
        finally:
            tasks: list[asyncio.Task[Any]] = [*pending, drained, registration]
            for running in tasks:
                running.cancel()
            # cancelling the registration deregisters; an error of any of them is reported
            # above already (RegistrationEnded) or moot now
            await asyncio.gather(*tasks, return_exceptions=True)


def _ended(registration: asyncio.Task[None]) -> RegistrationEnded:
    error = None if registration.cancelled() else registration.exception()
    ended = RegistrationEnded(f"the registration loop ended: {error!r}")
    ended.__cause__ = error
    return ended


async def _acknowledge(watcher: Watcher, notice: Notice) -> None:
    try:
        await watcher.acknowledge(notice)
    except (aiohttp.ClientError, TimeoutError, MetadataError) as exc:  # a courtesy: not fatal
        log.warning("could not acknowledge the notice %s: %s", notice, exc)
