"""Rows as JSON-ready dicts: what the admin API answers and the audit log stores."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def as_dict(record: asyncpg.Record | None) -> dict[str, Any]:
    """``record`` with times as ISO 8601 text; ``{}`` for no record."""
    return {} if record is None else {k: _plain(v) for k, v in dict(record).items()}
