"""UTC hours, pure: the unit of aggregation, read from operator input.

An hour is named by its start, a whole hour in UTC (``2026-11-29T20:00:00+00:00``). Times
read from operators are ISO 8601 dates or date-times; one without an offset is UTC.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from crosslogic.errors import Invalid
from crosslogic.times import parse_time

HOUR = timedelta(hours=1)
MAX_HOURS = 24 * 366  # one aggregation or report covers at most about a year of hours


def floor_hour(moment: datetime) -> datetime:
    """The start of the UTC hour holding ``moment``."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def ceil_hour(moment: datetime) -> datetime:
    """The first whole UTC hour at or after ``moment``."""
    start = floor_hour(moment)
    return start if start == moment else start + HOUR


def parse_hour(text: str, *, param: str) -> datetime:
    """A whole UTC hour, as an operator names it; Invalid if it is not one."""
    value = parse_time(text, param=param)
    if value != floor_hour(value):
        raise Invalid(f"'{param}' must be a whole hour (minutes and seconds zero).", param=param)
    return value


def window(
    start: datetime, end: datetime, *, start_param: str = "start", end_param: str = "end"
) -> tuple[datetime, datetime]:
    """``[start, end)`` widened to whole hours; Invalid if it is empty or over MAX_HOURS."""
    low, high = floor_hour(start), ceil_hour(end)
    if end <= start:
        raise Invalid(f"'{end_param}' must be after '{start_param}'.", param=end_param)
    if high - low > MAX_HOURS * HOUR:
        raise Invalid(
            f"The range from '{start_param}' to '{end_param}' covers more than {MAX_HOURS} hours.",
            param=end_param,
        )
    return low, high


def hours_in(start: datetime, end: datetime) -> Iterator[datetime]:
    """Every hour starting in ``[floor_hour(start), end)``, in order."""
    hour = floor_hour(start)
    while hour < end:
        yield hour
        hour += HOUR


def lag_seconds(oldest_dirty: datetime | None, *, now: datetime) -> float:
    """Seconds since the oldest usage change not aggregated yet (0: none)."""
    if oldest_dirty is None:
        return 0.0
    return max(0.0, (now - oldest_dirty).total_seconds())
