"""The clouds' interruption notices: one module per cloud, each a pure parser of the
metadata endpoint's answer and a watcher that polls it (base URL a setting, so tests point
it at a local stub).

A watcher's ``wait()`` returns once the cloud announces that this instance goes away; it
survives an unreachable or confused metadata endpoint by retrying, since missing the notice
costs the requests in flight. ``acknowledge()`` tells the cloud the node has drained, where
the cloud listens (Azure's scheduled events); elsewhere it does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Notice:
    """An interruption announced by ``source``. ``final``: the agent itself is being stopped
    (a Kubernetes pod deleted): once drained it deregisters and exits."""

    source: str
    reason: str
    event_id: str | None = None  # Azure: the scheduled event to acknowledge
    final: bool = False


class MetadataError(Exception):
    """The metadata endpoint answered, but not in the shape its cloud documents."""


class Watcher(Protocol):
    async def wait(self) -> Notice: ...

    async def acknowledge(self, notice: Notice) -> None: ...
