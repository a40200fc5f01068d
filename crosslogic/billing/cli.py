"""The billing commands for operators and cron: ``crosslogic billing
aggregate|report|reconcile`` here, ``export|customer`` in ``export_cli``.

Each subcommand validates its arguments before any I/O, then runs on one PostgreSQL
connection and prints JSON (``report --format csv``: CSV). They are safe beside the billing
service and each other: aggregation takes each hour's advisory lock (a second run waits,
then recomputes the same sums), reports and reconciliation only read.

Exit status, for a cron wrapper: 0 done (``reconcile``: no difference); 1 ``reconcile``
found a difference, or the command was refused (an unknown tenant); 2 bad arguments or no
database configured; 3 PostgreSQL unavailable (worth a retry). ``export`` also answers 3
when some events failed (retried later) and 75 when another export is running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from crosslogic.billing import aggregation, export_cli, reports
from crosslogic.billing.hours import HOUR, floor_hour, hours_in, parse_hour, window
from crosslogic.billing.reconcile import Window, reconcile
from crosslogic.db.connection import connect, read_settings
from crosslogic.db.errors import postgres_errors
from crosslogic.errors import DomainError, Invalid, Unavailable
from crosslogic.settings import Settings
from crosslogic.times import parse_time

COMMANDS = ("billing",)

OK, DIFFERENCE, USAGE, UNAVAILABLE = 0, 1, 2, 3
REFUSED = 1


@dataclass(frozen=True)
class Outcome:
    """What a subcommand prints, and its exit status."""

    text: str
    status: int = OK


# A subcommand: parsed arguments -> its work on a connection (or Invalid, before any I/O).
Work = Callable[[asyncpg.Connection], Awaitable[Outcome]]
Handler = Callable[[argparse.Namespace], Work]


def as_json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)


def _aggregate(args: argparse.Namespace) -> Work:
    now = datetime.now(UTC)
    hours: list[datetime] | None = None
    if args.hour is not None:
        if args.since is not None or args.until is not None:
            raise Invalid("--hour cannot be combined with --since/--until.", param="hour")
        hours = [parse_hour(args.hour, param="hour")]
    elif args.since is not None:
        since = parse_time(args.since, param="since")
        until = parse_time(args.until, param="until") if args.until else floor_hour(now) + HOUR
        low, high = window(since, until, start_param="since", end_param="until")
        hours = list(hours_in(low, high))
    elif args.until is not None:
        raise Invalid("--until needs --since.", param="until")

    async def work(conn: asyncpg.Connection) -> Outcome:
        if hours is None:
            results = await aggregation.aggregate_dirty(conn)
        else:
            results = await aggregation.aggregate_hours(conn, hours)
        return Outcome(
            as_json(
                {
                    "hours": [r.as_dict() for r in results],
                    "lag_seconds": await aggregation.lag(conn),
                }
            )
        )

    return work


def _report(args: argparse.Namespace) -> Work:
    params = {
        name: value
        for name, value in (
            ("start", args.start),
            ("end", args.end),
            ("group_by", args.group_by),
            ("format", args.format),
        )
        if value is not None
    }
    query = reports.parse_report(params, now=datetime.now(UTC))

    async def work(conn: asyncpg.Connection) -> Outcome:
        report = await reports.tenant_report(conn, tenant_id=args.tenant, query=query)
        if query.format == "csv":
            return Outcome(reports.to_csv(report).rstrip("\n"))
        return Outcome(as_json(report))

    return work


def _reconcile(args: argparse.Namespace) -> Work:
    since = parse_time(args.since, param="since") if args.since else None
    until = parse_time(args.until, param="until") if args.until else None
    if since is not None and until is not None:
        since, until = window(since, until, start_param="since", end_param="until")
    elif since is not None:
        since = floor_hour(since)

    async def work(conn: asyncpg.Connection) -> Outcome:
        result = await reconcile(conn, Window(since, until))
        return Outcome(as_json(result.as_dict()), DIFFERENCE if result.differences else OK)

    return work


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``billing`` with its subcommands; each leaf sets ``run`` (and ``handler``)."""
    billing = sub.add_parser(
        "billing",
        help="aggregate usage, report it, reconcile the billing tables, export to Stripe "
        "(cron-safe)",
    ).add_subparsers(dest="action", required=True)

    p = billing.add_parser(
        "aggregate",
        help="recompute hourly aggregates: every changed hour (default), one hour, or a range",
    )
    p.add_argument("--hour", default=None, metavar="H", help="one whole UTC hour (ISO 8601)")
    p.add_argument("--since", default=None, metavar="T", help="every hour from T (ISO 8601)")
    p.add_argument("--until", default=None, metavar="T", help="... to T (default: now)")
    p.set_defaults(run=run_outcome, handler=_aggregate)

    p = billing.add_parser("report", help="a tenant's usage: tokens, requests and cost")
    p.add_argument("--tenant", required=True, metavar="ID", help="the tenant's id")
    p.add_argument("--start", default=None, metavar="T", help="default: this month's start")
    p.add_argument("--end", default=None, metavar="T", help="default: the end of this hour")
    p.add_argument(
        "--group-by",
        default=None,
        metavar="G,...",
        help=f"comma-separated: {', '.join(reports.GROUPS)} (day or hour, not both)",
    )
    p.add_argument("--format", default=None, metavar="json|csv", help="default: json")
    # a report reads the aggregates: DB_READ_HOST's replica may serve it (reconcile's
    # findings are acted on, aggregation writes: both stay on the primary)
    p.set_defaults(run=run_outcome, handler=_report, replica=True)

    p = billing.add_parser(
        "reconcile",
        help="compare usage rows, aggregates, exported events and credits; print every "
        "difference (exit 1 if any)",
    )
    p.add_argument("--since", default=None, metavar="T", help="hours from T (default: all)")
    p.add_argument("--until", default=None, metavar="T", help="hours before T")
    p.set_defaults(run=run_outcome, handler=_reconcile)

    export_cli.add_export(billing)
    export_cli.add_customer(billing)


async def _execute(settings: Settings, work: Work) -> Outcome:
    with postgres_errors():
        conn = await connect(settings)
        try:
            return await work(conn)
        finally:
            await conn.close()


def run_outcome(settings: Settings, args: argparse.Namespace) -> int:
    """Run an aggregate, report or reconcile ``handler`` and print its outcome."""
    if settings.db_host is None:
        print(
            "crosslogic billing needs DB_HOST (and DB_PORT, DB_USER, DB_PASSWORD, DB_NAME) "
            "of the control plane's PostgreSQL",
            file=sys.stderr,
        )
        return USAGE
    try:
        work = args.handler(args)
    except Invalid as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return USAGE
    try:
        server = read_settings(settings) if getattr(args, "replica", False) else settings
        outcome = asyncio.run(_execute(server, work))
    except Unavailable as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return UNAVAILABLE
    except DomainError as exc:  # refused: an unknown tenant
        print(f"error: {exc.message}", file=sys.stderr)
        return REFUSED
    except asyncpg.UndefinedTableError as exc:
        print(f"error: {exc}; run `crosslogic migrate` first", file=sys.stderr)
        return REFUSED
    print(outcome.text)
    return outcome.status


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Each subcommand names the function that runs it (``run``)."""
    code: int = args.run(settings, args)
    return code
