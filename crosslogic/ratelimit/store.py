"""Redis transport for the limiter: gcra.lua for a request's tenant slot, lease.lua for a
slice of a global limit; one round trip each."""

from __future__ import annotations

from collections.abc import Sequence

from crosslogic.ratelimit.gcra import Limit, script_args
from crosslogic.ratelimit.lease import Ask
from crosslogic.redis_client import RedisClient
from crosslogic.redis_pipe import read_script


class RedisCounters:
    """Evaluates limits of one slot in one EVALSHA (atomic, one round trip). Raises
    :class:`crosslogic.errors.Unavailable` when Redis cannot answer."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._gcra = read_script("crosslogic.ratelimit", "gcra.lua")
        self._lease = read_script("crosslogic.ratelimit", "lease.lua")

    async def prepare(self) -> None:
        """Connect and load the scripts before the first request needs them."""
        await self._client.load_script(self._gcra)
        await self._client.load_script(self._lease)

    async def evaluate(self, limits: Sequence[Limit]) -> list[int]:
        keys, argv = script_args(limits)
        reply = await self._client.eval_script(self._gcra, keys, argv)
        return [int(x) for x in reply]

    async def lease(self, limit: Limit, ask: Ask) -> list[int]:
        """lease.lua's reply: granted units (0: refused), retry_after_us, remaining,
        reset_after_us."""
        argv = [
            limit.period_s * 1_000_000,
            limit.limit,
            ask.units,
            ask.least,
            1 if limit.kind == "tokens" else 0,
        ]
        reply = await self._client.eval_script(self._lease, [limit.redis_key], argv)
        return [int(x) for x in reply]
