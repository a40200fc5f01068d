"""AWS: the spot instance-action in the instance metadata (IMDSv2).

``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` returns a session
token; ``GET /latest/meta-data/spot/instance-action`` with ``X-aws-ec2-metadata-token``
answers 404 until EC2 decides to interrupt the instance, then ``{"action": "terminate" |
"stop" | "hibernate", "time": "2026-11-30T05:00:00Z"}`` (about two minutes ahead, except
for hibernation). AWS suggests polling every 5 s; the agent polls faster to drain within a
second. A 401 means the token expired: a new one is fetched.
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


class AwsWatcher:
    """Polls the spot instance-action with an IMDSv2 session token."""

    def __init__(self, session: aiohttp.ClientSession, *, base_url: str, interval_s: float) -> None:
        self._session = session
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
        url = self._base + ACTION_PATH
        async with self._session.get(url, headers=headers, timeout=self._timeout) as response:
            body = await response.text()
            if response.status == 401:
                self._token = None  # expired or revoked: the next poll fetches a new one
            return parse_instance_action(response.status, body)

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
