"""Moments given by operators and clients: one way to read an ISO 8601 time."""

from __future__ import annotations

from datetime import UTC, datetime

from crosslogic.errors import Invalid


def parse_time(raw: object, *, param: str) -> datetime:
    """``raw`` (an ISO 8601 date or date-time; ``Z`` allowed; without an offset: UTC) as an
    aware UTC datetime; Invalid naming ``param`` otherwise."""
    try:
        if not isinstance(raw, str):
            raise ValueError(raw)
        value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
        if value.tzinfo is not None:
            value = value.astimezone(UTC)  # OverflowError past year 1 or 9999
    except (ValueError, OverflowError):
        raise Invalid(
            f"'{param}' must be an ISO 8601 date or date-time (e.g. 2026-11-29T20:00:00Z), "
            f"not {str(raw)[:64]!r}.",
            param=param,
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
