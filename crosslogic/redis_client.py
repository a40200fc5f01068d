"""The Redis client every process uses, and the one function that builds it from settings:
a single Redis (REDIS_HOST/REDIS_PORT, the embedded default) or a Redis Cluster
(REDIS_CLUSTER, its seed nodes). Both speak the same interface, ``RedisClient``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from crosslogic.redis_cluster import Address, ClusterRedis
from crosslogic.redis_pipe import PipelinedRedis
from crosslogic.settings import Settings


class RedisClient(Protocol):
    """Commands, unconfirmed writes and scripts; Redis trouble is Unavailable("Redis")."""

    async def call(self, *args: str | bytes | int) -> Any: ...

    async def send_unconfirmed(
        self, *args: str | bytes | int, on_reply: Callable[[Any], None]
    ) -> None: ...

    async def load_script(self, script: str) -> None: ...

    async def eval_script(self, script: str, keys: list[str], args: list[int]) -> Any: ...

    def slot_groups(self, keys: Sequence[str]) -> list[list[str]]:
        """``keys`` in groups that one script call may touch together."""
        ...

    def close(self) -> None: ...


def cluster_seeds(text: str) -> list[Address]:
    """REDIS_CLUSTER's "host:port,host:port" (validated by crosslogic.settings)."""
    seeds = []
    for item in text.split(","):
        host, _, port = item.strip().rpartition(":")
        seeds.append((host, int(port)))
    return seeds


def redis_address(settings: Settings) -> Address:
    """The single Redis, or the first seed node of a cluster."""
    if settings.redis_cluster:
        return cluster_seeds(settings.redis_cluster)[0]
    return settings.redis_host or "127.0.0.1", settings.redis_port


def open_redis(settings: Settings, *, timeout: float) -> RedisClient:
    """The client for this deployment's Redis; it connects on first use."""
    if settings.redis_cluster:
        return ClusterRedis(
            cluster_seeds(settings.redis_cluster),
            password=settings.redis_password,
            timeout=timeout,
        )
    return PipelinedRedis(
        settings.redis_host or "127.0.0.1",
        settings.redis_port,
        password=settings.redis_password,
        timeout=timeout,
    )
