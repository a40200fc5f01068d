"""GCP: ``instance/preempted`` in the metadata server.

``GET /computeMetadata/v1/instance/preempted`` with ``Metadata-Flavor: Google`` answers
``FALSE`` until Compute Engine preempts the VM, then ``TRUE`` (about 30 s ahead). With
``wait_for_change=true&last_etag=<ETag>`` the server holds the request until the value
differs from that ETag's (or ``timeout_sec`` passes): the notice arrives at once, without
polling. The first read has no ETag, so a VM preempted before the agent started is seen.
"""

from __future__ import annotations

import aiohttp

from crosslogic.agent.notices import MetadataError, Notice
from crosslogic.agent.notices.polling import FAILURES, poll

DEFAULT_URL = "http://metadata.google.internal"
PATH = "/computeMetadata/v1/instance/preempted"
FLAVOR = {"Metadata-Flavor": "Google"}
LONG_POLL_S = 60


def parse_preempted(status: int, body: str) -> bool:
    if status != 200:
        raise MetadataError(f"instance/preempted answered HTTP {status}")
    value = body.strip()
    if value not in ("TRUE", "FALSE"):
        raise MetadataError(f"instance/preempted is neither TRUE nor FALSE: {value[:100]!r}")
    return value == "TRUE"


class GcpWatcher:
    """Long-polls ``instance/preempted``; after a failure, reads it afresh."""

    def __init__(self, session: aiohttp.ClientSession, *, base_url: str, interval_s: float) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + PATH
        self._interval_s = interval_s
        self._etag: str | None = None

    async def wait(self) -> Notice:
        return await poll(self._check, interval_s=self._interval_s, what="GCP metadata")

    async def acknowledge(self, notice: Notice) -> None:
        """Compute Engine takes no acknowledgement."""

    async def _check(self) -> Notice | None:
        params: dict[str, str] = {}
        if self._etag is not None:
            params = {"wait_for_change": "true", "last_etag": self._etag}
            params["timeout_sec"] = str(LONG_POLL_S)
        timeout = aiohttp.ClientTimeout(total=LONG_POLL_S + 5.0)
        try:
            async with self._session.get(
                self._url, params=params, headers=FLAVOR, timeout=timeout
            ) as response:
                preempted = parse_preempted(response.status, await response.text())
                self._etag = response.headers.get("ETag")
        except FAILURES:
            self._etag = None
            raise
        if preempted:
            return Notice(source="gcp", reason="instance preempted")
        return None
