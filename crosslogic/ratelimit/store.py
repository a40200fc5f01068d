"""Redis transport for the limiter: runs gcra.lua in one round trip."""

from __future__ import annotations

from collections.abc import Sequence

from crosslogic.ratelimit.gcra import Limit, script_args
from crosslogic.redis_pipe import PipelinedRedis, read_script


class RedisCounters:
    """Evaluates every limit of one request in one EVALSHA (atomic, one round trip). Raises
    :class:`crosslogic.errors.Unavailable` when Redis cannot answer."""

    def __init__(self, client: PipelinedRedis) -> None:
        self._client = client
        self._gcra = read_script("crosslogic.ratelimit", "gcra.lua")

    async def prepare(self) -> None:
        """Connect and load the script before the first request needs them."""
        await self._client.call("SCRIPT", "LOAD", self._gcra)

    async def evaluate(self, limits: Sequence[Limit]) -> list[int]:
        keys, argv = script_args(limits)
        reply = await self._client.eval_script(self._gcra, keys, argv)
        return [int(x) for x in reply]
