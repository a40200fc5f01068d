"""What reconciliation reports: a window of hours, and each difference (or pending one)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg


@dataclass(frozen=True)
class Window:
    """Hours starting in ``[start, end)``; None: unbounded on that side."""

    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class Difference:
    """One value that two tables disagree on: ``expected`` (from the source of truth, e.g.
    usage rows) and ``found`` (e.g. the aggregate); None where a side has no row at all.
    ``reason`` names the kind where a check has several; a ``pending`` one is expected to
    resolve by itself (the next aggregation, export or quota sweep) and is listed apart."""

    check: str
    subject: Mapping[str, Any]
    field: str
    expected: str | None
    found: str | None
    reason: str | None = None
    pending: bool = False

    def as_dict(self) -> dict[str, Any]:
        named = {} if self.reason is None else {"reason": self.reason}
        return {
            "check": self.check,
            **self.subject,
            "field": self.field,
            "expected": self.expected,
            "found": self.found,
            **named,
        }


# A check: the connection (inside reconcile's read-only snapshot) and the window -> what it
# found, pending ones included.
Check = Callable[[asyncpg.Connection, Window], Awaitable[list[Difference]]]


def text(value: object) -> str | None:
    return None if value is None else str(value)
