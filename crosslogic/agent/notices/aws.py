"""AWS: the spot instance-action in the instance metadata (IMDSv2).

``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` returns a session
token; ``GET /latest/meta-data/spot/instance-action`` with ``X-aws-ec2-metadata-token``
answers 404 until EC2 decides to interrupt the instance, then ``{"action": "terminate" |
"stop" | "hibernate", "time": "2026-11-30T05:00:00Z"}`` (about two minutes ahead, except
for hibernation). AWS suggests polling every 5 s; the agent polls faster to drain within a
second. A 401 means the token expired: a new one is fetched. Optionally the agent also
drains on a rebalance recommendation (``/latest/meta-data/events/recommendations/
rebalance``: 404, then ``{"noticeTime": ...}``), an earlier, less certain signal.
"""

from __future__ import annotations

import json
import time

import aiohttp

from crosslogic.agent.notices import MetadataError, Notice
from crosslogic.agent.notices.polling import poll

DEFAULT_URL = "http://169.254.169.254"
TOKEN_PATH = "/latest/api/token"
ACTION_PATH = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TOKEN_TTL_S = 21600  # the longest IMDS grants
_ACTIONS = ("terminate", "stop", "hibernate")


def parse_instance_action(status: int, body: str) -> Notice | None:
    """The notice in an instance-action answer; None while there is none (404)."""
    if status == 404:
        return None
    if status != 200:
        raise MetadataError(f"instance-action answered HTTP {status}")
    try:
        data = json.loads(body)
    except ValueError:
        raise MetadataError(f"instance-action is not JSON: {body[:200]!r}") from None
    action = data.get("action") if isinstance(data, dict) else None
    if action not in _ACTIONS:
        raise MetadataError(f"instance-action has no known action: {body[:200]!r}")
    return Notice(source="aws", reason=f"spot instance {action} at {data.get('time')}")


def parse_rebalance(status: int, body: str) -> Notice | None:
    """The notice in a rebalance recommendation answer; None while there is none (404)."""
    if status == 404:
        return None
    if status != 200:
        raise MetadataError(f"rebalance recommendation answered HTTP {status}")
    try:
        data = json.loads(body)
    except ValueError:
        raise MetadataError(f"rebalance recommendation is not JSON: {body[:200]!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("noticeTime"), str):
        raise MetadataError(f"rebalance recommendation without a noticeTime: {body[:200]!r}")
    return Notice(source="aws", reason=f"rebalance recommendation at {data['noticeTime']}")


# what each poll reads, in order: the notice, then (if asked) the recommendation
_READS = ((ACTION_PATH, parse_instance_action), (REBALANCE_PATH, parse_rebalance))


class AwsWatcher:
    """Polls the spot instance-action (and the rebalance recommendation, if asked) with an
    IMDSv2 session token."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        interval_s: float,
        rebalance: bool = False,
    ) -> None:
        self._session = session
        self._reads = _READS if rebalance else _READS[:1]
        self._base = base_url.rstrip("/")
        self._interval_s = interval_s
        self._timeout = aiohttp.ClientTimeout(total=2.0)
        self._token: str | None = None
        self._token_until = 0.0

    async def wait(self) -> Notice:
        return await poll(self._check, interval_s=self._interval_s, what="AWS IMDS")

    async def acknowledge(self, notice: Notice) -> None:
        """EC2 takes no acknowledgement."""

    async def _check(self) -> Notice | None:
        headers = {TOKEN_HEADER: await self._session_token()}
        for path, parse in self._reads:
            url = self._base + path
            async with self._session.get(url, headers=headers, timeout=self._timeout) as reply:
                body = await reply.text()
                if reply.status == 401:
                    self._token = None  # expired or revoked: the next poll fetches a new one
                notice = parse(reply.status, body)
            if notice is not None:
                return notice
        return None

    async def _session_token(self) -> str:
        if self._token is None or time.monotonic() >= self._token_until:
            url = self._base + TOKEN_PATH
            headers = {TTL_HEADER: str(TOKEN_TTL_S)}
            async with self._session.put(url, headers=headers, timeout=self._timeout) as reply:
                token = (await reply.text()).strip()
                if reply.status != 200 or not token:
                    raise MetadataError(f"IMDSv2 token request answered HTTP {reply.status}")
            self._token = token
            self._token_until = time.monotonic() + TOKEN_TTL_S - 60
        return self._token
