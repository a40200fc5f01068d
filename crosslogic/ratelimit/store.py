"""Redis transport for the limiter: runs gcra.lua, translates driver errors."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from crosslogic.ratelimit.limiter import Limit, script_args


class CounterStoreUnavailable(RuntimeError):
    """Redis did not answer in time or refused the script."""


def load_script(name: str) -> str:
    return (resources.files("crosslogic.ratelimit") / name).read_text()


class RedisCounters:
    """Evaluates every limit of one request in one EVALSHA (atomic, one round trip)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._gcra = client.register_script(load_script("gcra.lua"))

    async def evaluate(self, limits: Sequence[Limit]) -> list[int]:
        keys, argv = script_args(limits)
        try:
            reply = await self._gcra(keys=keys, args=argv)
        except (RedisError, OSError, TimeoutError) as exc:
            raise CounterStoreUnavailable(str(exc)) from exc
        return [int(x) for x in reply]


def client_for(host: str, port: int, *, password: str, timeout: float) -> aioredis.Redis:
    return aioredis.Redis(
        host=host,
        port=port,
        password=password or None,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        max_connections=64,
        health_check_interval=30,
    )
