"""Usage reports of one tenant, read from ``usage_hourly``: what to report (parsed, pure),
the query, and the CSV form.

A report covers the hours starting in ``[start, end)`` (both widened to whole UTC hours),
optionally grouped by model, environment, region and one of day or hour; each line carries
requests, tokens and cost. Costs are the exact sums of the rows' costs (decimal strings in
JSON, never floats). The JSON form also has ``charges``: reserved capacity's fees and overage
and the other metered usage as separate lines (:mod:`crosslogic.billing.charges`).
Reports read the aggregates, so the last hours appear once aggregated.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from crosslogic.accounts import records
from crosslogic.billing.charges import charges, reserved
from crosslogic.billing.hours import HOUR, floor_hour, window
from crosslogic.errors import Invalid
from crosslogic.times import parse_time

FORMATS = ("json", "csv")
# a group's name (its column in the report) -> its SQL expression
GROUPS: dict[str, str] = {
    "model": "m.name",
    "environment": "e.name",
    "region": "u.region_code",
    "day": "date_trunc('day', u.hour, 'UTC')",
    "hour": "u.hour",
}
MEASURES = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd")
PARAMS = ("start", "end", "group_by", "format")


@dataclass(frozen=True)
class ReportQuery:
    start: datetime
    end: datetime
    group_by: tuple[str, ...] = ()
    format: str = "json"


def month_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def parse_report(params: Mapping[str, str], *, now: datetime, accept: str = "") -> ReportQuery:
    """A report's query parameters (default: this month so far, ungrouped, JSON, or CSV if
    ``accept`` asks for text/csv); Invalid naming the parameter."""
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise Invalid(f"Unknown parameter(s): {', '.join(unknown)}.", param=unknown[0])
    start = parse_time(params["start"], param="start") if "start" in params else month_start(now)
    end = parse_time(params["end"], param="end") if "end" in params else floor_hour(now) + HOUR
    start, end = window(start, end)
    group_by = _groups(params.get("group_by", ""))
    default = "csv" if "text/csv" in accept else "json"
    chosen = params.get("format", default)
    if chosen not in FORMATS:
        raise Invalid(f"'format' must be one of {', '.join(FORMATS)}.", param="format")
    return ReportQuery(start, end, group_by, chosen)


def _groups(text: str) -> tuple[str, ...]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in GROUPS:
            raise Invalid(
                f"'group_by' takes a comma-separated list of {', '.join(GROUPS)}; "
                f"not {name[:64]!r}.",
                param="group_by",
            )
    if len(set(names)) != len(names):
        raise Invalid("'group_by' names a group twice.", param="group_by")
    if "day" in names and "hour" in names:
        raise Invalid("'group_by' takes one of day or hour, not both.", param="group_by")
    # a stable column order, whatever the order asked in
    return tuple(name for name in GROUPS if name in names)


def report_sql(group_by: tuple[str, ...]) -> str:
    """The report's query: $1 tenant, $2 start, $3 end."""
    keys = [f"{GROUPS[name]} AS {name}" for name in group_by]
    positions = ", ".join(str(i) for i in range(1, len(keys) + 1))
    return (
        "SELECT "
        + "".join(f"{key}, " for key in keys)
        + "coalesce(sum(u.request_count), 0) AS requests, "
        "coalesce(sum(u.prompt_tokens), 0) AS prompt_tokens, "
        "coalesce(sum(u.completion_tokens), 0) AS completion_tokens, "
        "coalesce(sum(u.cost_usd), 0) AS cost_usd "
        "FROM usage_hourly AS u JOIN models AS m ON m.id = u.model_id "
        "JOIN environments AS e ON e.id = u.environment_id "
        "WHERE u.tenant_id = $1 AND u.hour >= $2 AND u.hour < $3"
        + (f" GROUP BY {positions} ORDER BY {positions}" if keys else "")
    )


def plain(amount: Decimal) -> str:
    """A decimal without exponent: 0.0000000009, never 9E-10."""
    return f"{amount:f}"


def line(row: Mapping[str, Any], group_by: tuple[str, ...]) -> dict[str, Any]:
    """A report line in JSON's terms: times in ISO 8601, costs as decimal strings."""
    out: dict[str, Any] = {}
    for name in group_by:
        value = row[name]
        if name == "day":
            value = value.astimezone(UTC).date().isoformat()
        elif name == "hour":
            value = value.astimezone(UTC).isoformat()
        elif name == "region":
            value = value or None  # '' is "unknown region"
        out[name] = value
    out["requests"] = int(row["requests"])
    out["prompt_tokens"] = int(row["prompt_tokens"])
    out["completion_tokens"] = int(row["completion_tokens"])
    out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    out["cost_usd"] = plain(Decimal(row["cost_usd"]))
    return out


def totals(lines: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {m: sum(item[m] for item in lines) for m in MEASURES[:-1]}
    total["cost_usd"] = plain(sum((Decimal(item["cost_usd"]) for item in lines), Decimal(0)))
    return total


async def tenant_report(
    conn: asyncpg.Connection, *, tenant_id: str, query: ReportQuery
) -> dict[str, Any]:
    """The report of an existing tenant (NotFound otherwise)."""
    tenant = await records.get(conn, "tenant", tenant_id)
    rows = await conn.fetch(report_sql(query.group_by), tenant["id"], query.start, query.end)
    lines = [line(r, query.group_by) for r in rows]
    if not query.group_by and lines and lines[0]["requests"] == 0:
        lines = []  # no usage: no line rather than a line of zeros
    total = totals(lines)
    reservations = await reserved(conn, tenant_id=tenant["id"], start=query.start, end=query.end)
    return {
        "tenant_id": tenant["id"],
        "start": query.start.isoformat(),
        "end": query.end.isoformat(),
        "group_by": list(query.group_by),
        "data": lines,
        "total": total,
        "charges": charges(
            tokens=total["total_tokens"],
            cost=Decimal(total["cost_usd"]),
            reservations=reservations,
            start=query.start,
            end=query.end,
        ),
    }


def to_csv(report: Mapping[str, Any]) -> str:
    """The report's lines as CSV with a header row (no total line: a sum is one formula)."""
    columns = [*report["group_by"], *MEASURES]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for item in report["data"]:
        writer.writerow(["" if item[c] is None else item[c] for c in columns])
    return out.getvalue()
