"""Each cloud's watcher against the local metadata stub, in process: it sends the headers
its cloud requires, says nothing until the notice, then returns it; AWS renews an expired
IMDSv2 token and, if asked, drains at a rebalance recommendation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from crosslogic.agent.notices import Notice, Watcher
from crosslogic.agent.notices.aws import AwsWatcher
from crosslogic.agent.notices.azure import AzureWatcher
from crosslogic.agent.notices.gcp import GcpWatcher
from crosslogic.ports import free_port
from tests.support.cloud_metadata import MetadataStub

Make = Callable[[aiohttp.ClientSession, str], Watcher]
WATCHERS: dict[str, Make] = {
    "aws": lambda s, url: AwsWatcher(s, base_url=url, interval_s=0.02),
    "gcp": lambda s, url: GcpWatcher(s, base_url=url, interval_s=0.02),
    "azure": lambda s, url: AzureWatcher(s, base_url=url, interval_s=0.02),
}


async def _with_stub(stub: MetadataStub, scenario: Callable[[str], Awaitable[None]]) -> None:
    runner = web.AppRunner(stub.app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await scenario(f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


async def _quiet_then(watcher: Watcher, announce: Callable[[], None]) -> Notice:
    """The notice ``watcher`` returns after ``announce``; none before it."""
    waiting = asyncio.create_task(watcher.wait())
    await asyncio.sleep(0.2)  # ten polls that must find nothing
    assert not waiting.done()
    announce()
    return await asyncio.wait_for(waiting, timeout=5)


@pytest.mark.parametrize("cloud", sorted(WATCHERS))
def test_a_watcher_returns_its_clouds_notice(cloud: str) -> None:
    stub = MetadataStub()

    async def scenario(url: str) -> None:
        async with aiohttp.ClientSession() as session:
            watcher = WATCHERS[cloud](session, url)
            notice = await _quiet_then(watcher, stub.interrupted.set)
            assert notice.source == cloud and not notice.final
            await watcher.acknowledge(notice)

    asyncio.run(_with_stub(stub, scenario))
    assert not [c for c in stub.calls if c["status"] in (400, 403)]  # every header right
    assert stub.approved == ([stub.azure_event_id] if cloud == "azure" else [])


def test_aws_renews_an_expired_token_and_drains_on_a_rebalance_if_asked() -> None:
    stub = MetadataStub()

    async def scenario(url: str) -> None:
        async with aiohttp.ClientSession() as session:
            plain = AwsWatcher(session, base_url=url, interval_s=0.02)
            early = AwsWatcher(session, base_url=url, interval_s=0.02, rebalance=True)
            plain_waiting = asyncio.create_task(plain.wait())
            await asyncio.sleep(0.1)
            stub.tokens.clear()  # every token expires: 401, then a new token
            notice = await _quiet_then(early, stub.rebalance.set)
            assert notice.reason == "rebalance recommendation at 2026-11-30T04:58:00Z"
            await asyncio.sleep(0.1)
            assert not plain_waiting.done()  # a recommendation is no notice to it
            plain_waiting.cancel()

    asyncio.run(_with_stub(stub, scenario))
    token_requests = [c for c in stub.calls if c["path"] == "/latest/api/token"]
    assert len(token_requests) >= 3  # one each, then new ones after the expiry
    assert any(c["status"] == 401 for c in stub.calls)
