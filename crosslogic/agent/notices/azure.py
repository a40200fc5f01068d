"""Azure: Scheduled Events in the instance metadata service.

``GET /metadata/scheduledevents?api-version=2020-07-01`` with ``Metadata: true`` answers
``{"DocumentIncarnation": n, "Events": [{"EventId", "EventType", "ResourceType",
"Resources": [VM names], "EventStatus", "NotBefore", ...}]}``. A spot VM's eviction is an
event of type ``Preempt`` (at least 30 s ahead), a deletion ``Terminate``; an event
concerns this VM when its ``Resources`` name it (``/metadata/instance/compute/name``), since
every VM of an availability set sees the set's events. Once drained, the agent approves the
event (``POST`` ``{"StartRequests": [{"EventId": ...}]}``) so Azure need not wait it out.
"""

from __future__ import annotations

import aiohttp

from crosslogic.agent.notices import MetadataError, Notice
from crosslogic.agent.notices.polling import poll

DEFAULT_URL = "http://169.254.169.254"
EVENTS_PATH = "/metadata/scheduledevents"
EVENTS_API = "2020-07-01"
NAME_PATH = "/metadata/instance/compute/name"
NAME_API = "2021-02-01"
HEADERS = {"Metadata": "true"}
INTERRUPTING = ("Preempt", "Terminate")


def parse_events(body: object, *, instance: str) -> Notice | None:
    """The first Preempt or Terminate event naming ``instance``; None if there is none."""
    events = body.get("Events") if isinstance(body, dict) else None
    if not isinstance(events, list):
        raise MetadataError(f"scheduled events without an Events list: {str(body)[:200]}")
    for event in events:
        if not isinstance(event, dict) or event.get("EventType") not in INTERRUPTING:
            continue
        resources = event.get("Resources")
        if isinstance(resources, list) and instance in resources:
            event_id = event.get("EventId")
            return Notice(
                source="azure",
                reason=f"{event['EventType']} not before {event.get('NotBefore') or 'now'}",
                event_id=event_id if isinstance(event_id, str) else None,
            )
    return None


class AzureWatcher:
    """Polls this VM's scheduled events; approves the interrupting one once drained."""

    def __init__(self, session: aiohttp.ClientSession, *, base_url: str, interval_s: float) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._interval_s = interval_s
        self._timeout = aiohttp.ClientTimeout(total=2.0)
        self._instance: str | None = None

    async def wait(self) -> Notice:
        return await poll(self._check, interval_s=self._interval_s, what="Azure IMDS")

    async def acknowledge(self, notice: Notice) -> None:
        if notice.event_id is None:
            return
        url = self._base + EVENTS_PATH
        body = {"StartRequests": [{"EventId": notice.event_id}]}
        async with self._session.post(
            url,
            params={"api-version": EVENTS_API},
            json=body,
            headers=HEADERS,
            timeout=self._timeout,
        ) as response:
            if response.status != 200:
                raise MetadataError(f"approving event {notice.event_id}: HTTP {response.status}")

    async def _check(self) -> Notice | None:
        instance = self._instance or await self._instance_name()
        url = self._base + EVENTS_PATH
        async with self._session.get(
            url, params={"api-version": EVENTS_API}, headers=HEADERS, timeout=self._timeout
        ) as response:
            if response.status != 200:
                raise MetadataError(f"scheduled events answered HTTP {response.status}")
            try:
                body = await response.json(content_type=None)
            except ValueError:
                raise MetadataError("scheduled events are not JSON") from None
        return parse_events(body, instance=instance)

    async def _instance_name(self) -> str:
        url = self._base + NAME_PATH
        params = {"api-version": NAME_API, "format": "text"}
        async with self._session.get(
            url, params=params, headers=HEADERS, timeout=self._timeout
        ) as response:
            name = (await response.text()).strip()
            if response.status != 200 or not name:
                raise MetadataError(f"instance name answered HTTP {response.status}")
        self._instance = name
        return name
