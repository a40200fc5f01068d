"""Redis transport for the limiter: runs gcra.lua in one round trip."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import hiredis

from crosslogic.ratelimit.limiter import Limit, script_args
from crosslogic.ratelimit.resp import PipelinedRedis, RedisUnavailable


class CounterStoreUnavailable(RuntimeError):
    """Redis did not answer in time or refused the script."""


def load_script(name: str) -> str:
    return (resources.files("crosslogic.ratelimit") / name).read_text()


class RedisCounters:
    """Evaluates every limit of one request in one EVALSHA (atomic, one round trip)."""

    def __init__(self, client: PipelinedRedis) -> None:
        self._client = client
        self._gcra = load_script("gcra.lua")

    async def prepare(self) -> None:
        """Connect and load the script before the first request needs them."""
        try:
            await self._client.call("SCRIPT", "LOAD", self._gcra)
        except (RedisUnavailable, hiredis.ReplyError) as exc:
            raise CounterStoreUnavailable(str(exc)) from exc

    async def evaluate(self, limits: Sequence[Limit]) -> list[int]:
        keys, argv = script_args(limits)
        try:
            reply = await self._client.eval_script(self._gcra, keys, argv)
        except RedisUnavailable as exc:
            raise CounterStoreUnavailable(str(exc)) from exc
        return [int(x) for x in reply]
