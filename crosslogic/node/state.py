"""One node app's state: its configuration, metrics and the slots that model engine
concurrency (vLLM's ``max_num_seqs``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry

from crosslogic.agent.load import NodeLoad
from crosslogic.node.config import NodeConfig
from crosslogic.node.metrics import NodeMetrics


class NodeState:
    """Per-app state; ``slot()`` is held by every request while the "engine" works on it."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self.metrics = NodeMetrics(registry=self.registry, config=config)
        self.created = int(time.time())
        self.running = 0
        self.waiting = 0
        self._slots = asyncio.Semaphore(config.max_num_seqs)
        # Gauges read the counters at scrape time: nothing to update per request.
        self.metrics.running.set_function(lambda: self.running)
        self.metrics.waiting.set_function(lambda: self.waiting)
        self.metrics.kv_cache.set_function(lambda: self.load().kv_cache_usage_perc)

    def load(self) -> NodeLoad:
        return NodeLoad(
            requests_running=self.running,
            requests_waiting=self.waiting,
            kv_cache_usage_perc=min(1.0, self.running / self.config.max_num_seqs),
        )

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        # Semaphore.acquire returns without suspending when a slot is free, so a request
        # is never observed as "waiting" unless it really queued.
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
