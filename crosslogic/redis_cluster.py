"""A Redis Cluster client with PipelinedRedis' interface: one pipelined connection per master.

Each command goes to the master of its key's slot (:func:`key_slot`), from the topology
``CLUSTER SLOTS`` of any node reports. A MOVED reply (a slot migrated, a replica promoted)
refreshes the topology and retries; ASK retries once on the target with ASKING; a node that
cannot be reached (a master failed over) refreshes the topology from the other nodes and
retries once, else the call is Unavailable, like a single Redis that is down. Scripts are
loaded on every master; one script call must touch keys of one slot (hash tags), else it is
a programming error (:class:`CrossSlot`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import hiredis

from crosslogic.errors import Unavailable
from crosslogic.redis_pipe import PipelinedRedis, script_sha, unavailable

SLOTS = 16384
MAX_REDIRECTS = 5
Address = tuple[str, int]


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16-XMODEM (polynomial 0x1021, initial 0), as Redis Cluster hashes keys."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def key_slot(key: str | bytes) -> int:
    """The slot of a key: of its hash tag (the first non-empty ``{...}``) when it has one."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return crc16(data) % SLOTS


class CrossSlot(ValueError):
    """One command or script call was given keys of several slots: a bug of the caller."""


def one_slot(keys: Sequence[str | bytes]) -> int | None:
    slots = {key_slot(key) for key in keys}
    if len(slots) > 1:
        raise CrossSlot(f"keys of {len(slots)} slots in one call: {list(keys)[:3]}...")
    return slots.pop() if slots else None


_MULTI_KEY = {"DEL", "UNLINK", "EXISTS", "MGET", "TOUCH"}
_NO_KEY = {"PING", "TIME", "INFO", "CLUSTER", "DBSIZE", "ECHO"}


def command_slot(args: Sequence[str | bytes | int]) -> int | None:
    """The slot a command is routed by (None: any master will do)."""
    name = str(args[0]).upper() if not isinstance(args[0], bytes) else args[0].decode().upper()
    if name in _NO_KEY or len(args) < 2:
        return None
    if name in ("EVAL", "EVALSHA"):
        count = int(args[2])
        return one_slot([str(k) if isinstance(k, int) else k for k in args[3 : 3 + count]])
    if name in _MULTI_KEY:
        return one_slot([str(k) if isinstance(k, int) else k for k in args[1:]])
    key = args[1]
    return key_slot(str(key) if isinstance(key, int) else key)


def parse_slots(
    reply: Sequence[Any], *, asked: Address
) -> tuple[list[Address | None], set[Address]]:
    """CLUSTER SLOTS -> the master of every slot, and every node named (replicas too)."""
    table: list[Address | None] = [None] * SLOTS
    nodes: set[Address] = set()
    for entry in reply:
        start, end = int(entry[0]), int(entry[1])
        for i, node in enumerate(entry[2:]):
            host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
            address = (host or asked[0], int(node[1]))
            nodes.add(address)
            if i == 0:
                table[start : end + 1] = [address] * (end - start + 1)
    return table, nodes


class ClusterRedis:
    """PipelinedRedis' ``call`` / ``send_unconfirmed`` / ``load_script`` / ``eval_script`` /
    ``close`` over a Redis Cluster; Redis trouble is Unavailable("Redis") as there."""

    def __init__(self, seeds: Sequence[Address], *, password: str = "", timeout: float) -> None:
        if not seeds:
            raise ValueError("a Redis Cluster needs at least one seed node")
        self._seeds = list(seeds)
        self._password, self._timeout = password, timeout
        self._nodes: dict[Address, PipelinedRedis] = {}
        self._known: set[Address] = set(seeds)
        self._table: list[Address | None] = [None] * SLOTS
        self._epoch = 0  # topology version: concurrent failures refresh it once
        self._refreshing: asyncio.Lock | None = None
        self._stale = True
        self._failing: set[Address | None] = set()

    def _node(self, address: Address) -> PipelinedRedis:
        node = self._nodes.get(address)
        if node is None:
            node = PipelinedRedis(
                address[0], address[1], password=self._password, timeout=self._timeout
            )
            self._nodes[address] = node
        return node

    def masters(self) -> list[Address]:
        return sorted({a for a in self._table if a is not None})

    async def refresh(self, *, seen: int | None = None) -> None:
        """Read the topology from the first node that answers (masters first, then seeds
        and replicas). ``seen``: the epoch the caller's failure happened in; a refresh done
        since then is enough."""
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            if seen is not None and seen != self._epoch:
                return
            masters = self.masters()
            others = [a for a in (*self._seeds, *sorted(self._known)) if a not in masters]
            # a node that just failed is asked last: it may not even time out quickly
            candidates = sorted(dict.fromkeys([*masters, *others]), key=self._failing.__contains__)
            failures = []
            for address in candidates:
                try:
                    reply = await self._node(address).call("CLUSTER", "SLOTS")
                except Unavailable as exc:
                    failures.append(f"{address[0]}:{address[1]}: {exc.detail}")
                    continue
                table, nodes = parse_slots(reply, asked=address)
                if all(a is None for a in table):
                    continue  # a node that has not joined yet knows no slots
                self._table, self._known = table, self._known | nodes
                self._failing.clear()
                self._epoch += 1
                self._stale = False
                return
            raise unavailable("no cluster node answers CLUSTER SLOTS: " + "; ".join(failures))

    async def _master(self, slot: int | None) -> PipelinedRedis:
        if self._stale:
            await self.refresh()
        if slot is None:
            masters = self.masters()
            if not masters:
                raise unavailable("the cluster serves no slot")
            return self._node(masters[0])
        address = self._table[slot]
        if address is None:
            raise unavailable(f"no master serves slot {slot}")
        return self._node(address)

    async def _on_slot(self, slot: int | None, *args: str | bytes | int) -> Any:
        """The reply (error replies returned) from the slot's master, after redirections."""
        asking: Address | None = None
        failed_over = False
        for _ in range(MAX_REDIRECTS):
            epoch = self._epoch
            try:
                if asking is not None:
                    reply = await self._node(asking).reply(*args, asking=True)
                    asking = None
                else:
                    reply = await (await self._master(slot)).reply(*args)
            except Unavailable as exc:
                # A slow reply is not retried: the command may have run (a script applied
                # twice). A lost connection is: a master gone, its replica may have taken
                # over (a command lost in flight may then run twice: rarer than a failover).
                if failed_over or exc.detail.startswith("no reply"):
                    raise
                failed_over = True
                self._failing.add(asking or self._table[slot] if slot is not None else None)
                await self.refresh(seen=epoch)
                continue
            if isinstance(reply, hiredis.ReplyError):
                kind, _, rest = str(reply).partition(" ")
                if kind in ("MOVED", "ASK"):
                    moved_slot, _, target = rest.partition(" ")
                    host, _, port = target.rpartition(":")
                    address = (host or "127.0.0.1", int(port))
                    if kind == "ASK":
                        asking = address
                    else:
                        self._table[int(moved_slot)] = address
                        await self.refresh(seen=epoch)
                    continue
            return reply
        raise unavailable(f"more than {MAX_REDIRECTS} redirections for one command")

    async def call(self, *args: str | bytes | int) -> Any:
        """As PipelinedRedis.call; SCRIPT goes to every master."""
        if str(args[0]).upper() == "SCRIPT":
            if self._stale:
                await self.refresh()
            replies = await asyncio.gather(*(self._node(a).call(*args) for a in self.masters()))
            return replies[0] if replies else None
        reply = await self._on_slot(command_slot(args), *args)
        if isinstance(reply, hiredis.ReplyError):
            raise unavailable(f"error reply: {reply}")
        return reply

    async def send_unconfirmed(
        self, *args: str | bytes | int, on_reply: Callable[[Any], None]
    ) -> None:
        """As PipelinedRedis.send_unconfirmed, on the key's master. A redirection shows in
        ``on_reply`` as the error it is, and makes the next call refresh the topology."""

        def replied(reply: Any) -> None:
            if isinstance(reply, Unavailable) and any(
                word in reply.detail for word in ("MOVED", "ASK", "connection lost")
            ):
                self._stale = True
            on_reply(reply)

        slot = command_slot(args)
        try:
            await (await self._master(slot)).send_unconfirmed(*args, on_reply=replied)
        except Unavailable:
            self._stale = True
            await self.refresh()
            await (await self._master(slot)).send_unconfirmed(*args, on_reply=replied)

    async def load_script(self, script: str) -> None:
        await self.call("SCRIPT", "LOAD", script)

    async def eval_script(self, script: str, keys: list[str], args: list[int]) -> Any:
        """EVALSHA on the master of the keys' one slot (several slots: :class:`CrossSlot`),
        loading the script there when that master does not know it."""
        sha = script_sha(script)
        slot = one_slot(keys)
        command: tuple[str | int, ...] = ("EVALSHA", sha, len(keys), *keys, *args)
        reply = await self._on_slot(slot, *command)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            # a master that is new (a promoted replica, a node added) has not loaded it yet;
            # loaded there only: another master may be the one that is down
            if slot is None:
                await self.load_script(script)
            else:
                await (await self._master(slot)).call("SCRIPT", "LOAD", script)
            reply = await self._on_slot(slot, *command)
        if isinstance(reply, hiredis.ReplyError):
            raise unavailable(f"script failed: {reply}")
        return reply

    def slot_groups(self, keys: Sequence[str]) -> list[list[str]]:
        """The keys by slot: one script call per group."""
        groups: dict[int, list[str]] = {}
        for key in keys:
            groups.setdefault(key_slot(key), []).append(key)
        return list(groups.values())

    def close(self) -> None:
        for node in self._nodes.values():
            node.close()
