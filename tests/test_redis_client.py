"""The pipelined Redis client against the session's real Redis."""

from __future__ import annotations

import asyncio

import pytest

from crosslogic.errors import Unavailable
from crosslogic.ports import free_port
from crosslogic.redis_pipe import PipelinedRedis, encode
from crosslogic.stack import Stack


def test_encode() -> None:
    assert encode("GET", "k", 7) == b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n$1\r\n7\r\n"


def test_pipelined_calls_keep_their_order_and_load_scripts(stack: Stack) -> None:
    async def scenario() -> None:
        client = PipelinedRedis(
            stack.settings.redis_host or "127.0.0.1", stack.settings.redis_port, timeout=1.0
        )
        try:
            await client.call("SET", "resp:test", "v")
            replies = await asyncio.gather(*(client.call("INCR", "resp:n") for _ in range(50)))
            assert sorted(replies) == replies and len(set(replies)) == 50
            script = "return {KEYS[1], ARGV[1] + 1, redis.call('GET', KEYS[1])}"
            await client.call("SCRIPT", "FLUSH")  # NOSCRIPT first, then loaded and retried
            assert await client.eval_script(script, ["resp:test"], [41]) == [b"resp:test", 42, b"v"]
            with pytest.raises(Unavailable, match="script failed"):
                await client.eval_script("return redis.call('NOPE')", [], [])
            # a reply that comes after its caller gave up is dropped, not given to the next call
            slow = (
                "local t = redis.call('TIME') local stop = t[1] * 1e6 + t[2] + 300000 "
                "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] > stop return 'late'"
            )
            impatient = PipelinedRedis(
                stack.settings.redis_host or "127.0.0.1", stack.settings.redis_port, timeout=0.1
            )
            with pytest.raises(Unavailable, match="no reply"):
                await impatient.eval_script(slow, [], [])
            await client.call("PING")  # answered once Redis is done with the slow script
            assert await impatient.call("GET", "resp:test") == b"v"
            impatient.close()
            await client.call("DEL", "resp:test", "resp:n")
        finally:
            client.close()

    asyncio.run(scenario())


def test_unreachable_redis_fails_fast() -> None:
    async def scenario() -> None:
        client = PipelinedRedis("127.0.0.1", free_port(), timeout=0.2)
        with pytest.raises(Unavailable):
            await client.call("PING")

    asyncio.run(scenario())


def test_an_unconfirmed_command_is_written_before_it_returns_and_its_reply_is_seen_later(
    stack: Stack,
) -> None:
    async def scenario() -> None:
        host = stack.settings.redis_host or "127.0.0.1"
        client = PipelinedRedis(host, stack.settings.redis_port, timeout=1.0)
        replies: list[object] = []
        try:
            await client.send_unconfirmed("HSET", "resp:h", "f", "v", on_reply=replies.append)
            # written, not yet confirmed: a second connection sees it once Redis has read it
            other = PipelinedRedis(host, stack.settings.redis_port, timeout=1.0)
            try:
                assert await other.call("HGET", "resp:h", "f") == b"v"
            finally:
                other.close()
            assert replies == [1]
            errors: list[object] = []
            await client.send_unconfirmed("INCR", "resp:h", on_reply=errors.append)
            await client.call("PING")  # replies come in order: the INCR's is in by now
            assert isinstance(errors[0], Unavailable) and "WRONGTYPE" in str(errors[0])
            await client.call("DEL", "resp:h")
        finally:
            client.close()

    asyncio.run(scenario())
