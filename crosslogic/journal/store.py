"""Billing's side of the admission journal in Redis (layout: crosslogic/contracts/journal.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from crosslogic.contracts.journal import boots_key, journal_key, valid_boot_id
from crosslogic.redis_client import RedisClient

CHUNK = 1000  # request ids per HDEL


class JournalStore:
    """Forgets entries whose usage rows are committed, and reads and drops a dead boot's.
    Every method raises :class:`crosslogic.errors.Unavailable` when Redis cannot answer."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis

    async def _all(self, commands: Iterable[tuple[Any, ...]]) -> list[Any]:
        # gathered: the commands leave in one write and cost one round trip
        return list(await asyncio.gather(*(self._redis.call(*c) for c in commands)))

    async def forget(self, by_boot: Mapping[str, Sequence[str]]) -> None:
        commands = [
            ("HDEL", journal_key(boot), *ids[i : i + CHUNK])
            for boot, ids in by_boot.items()
            for i in range(0, len(ids), CHUNK)
        ]
        if commands:
            await self._all(commands)

    async def entries(self, boot: str) -> dict[str, bytes]:
        (flat,) = await self._all([("HGETALL", journal_key(boot))])
        return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}

    async def drop(self, boot: str, gateway: str) -> None:
        await self._all([("DEL", journal_key(boot)), ("SREM", boots_key(gateway), boot)])

    async def boots(self, gateway: str) -> set[str]:
        """Every boot of ``gateway`` that journaled an admission and is not reconciled yet."""
        (members,) = await self._all([("SMEMBERS", boots_key(gateway))])
        return {m.decode() for m in members if valid_boot_id(m.decode())}

    async def pending(self, boots: Sequence[str]) -> int:
        if not boots:
            return 0
        return sum(int(n) for n in await self._all(("HLEN", journal_key(b)) for b in boots))
