"""The operator command line for reserved capacity: ``crosslogic reservations
create|list|show|cancel``.

Like ``crosslogic credits ...`` it runs the admin API's operations directly on PostgreSQL, one
transaction per command, validating with the API's parser (fed the JSON body the API would
get), so both refuse the same things with the same messages.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from crosslogic import operator_cli
from crosslogic.billing import reservation_store
from crosslogic.billing.reservations import reservation_spec
from crosslogic.operator_cli import Work, audited, integer
from crosslogic.settings import Settings

COMMANDS = ("reservations",)


def _create(args: argparse.Namespace) -> Work:
    body: dict[str, Any] = {
        "model": args.model,
        "tokens_per_minute": integer(args.tokens_per_minute),
        "starts_at": args.starts_at,
        "ends_at": args.ends_at,
        "fee_usd": args.fee_usd,
    }
    if args.region is not None:
        body["region"] = args.region
    if args.note is not None:
        body["note"] = args.note
    spec = reservation_spec(body, now=datetime.now(UTC))
    return lambda conn, actor: reservation_store.create(
        conn, actor=actor, tenant_id=args.tenant_id, spec=spec
    )


def _cancel(args: argparse.Namespace) -> Work:
    return lambda conn, actor: reservation_store.cancel(
        conn, actor=actor, reservation_id=args.reservation_id
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``reservations`` with its subcommands; each leaf sets ``handler``."""
    group = sub.add_parser(
        "reservations", help="reserved capacity: sell, list, show, cancel a tenant's"
    ).add_subparsers(dest="action", required=True)
    p = group.add_parser(
        "create", parents=[audited()], help="sell a postpaid tenant reserved capacity"
    )
    p.add_argument("tenant_id")
    p.add_argument("--model", required=True, help="the model's name")
    p.add_argument(
        "--region", default=None, metavar="CODE", help="one region (default: every region)"
    )
    p.add_argument("--tokens-per-minute", required=True, metavar="N")
    p.add_argument(
        "--starts-at", required=True, metavar="ISO8601", help="a whole UTC hour, not past"
    )
    p.add_argument("--ends-at", required=True, metavar="ISO8601", help="a whole UTC hour")
    p.add_argument("--fee-usd", required=True, metavar="USD", help="the fee, in whole cents")
    p.add_argument("--note", default=None)
    p.set_defaults(handler=_create)
    p = group.add_parser("list", help="a tenant's reservations, with their usage so far")
    p.add_argument("tenant_id")
    p.set_defaults(
        handler=lambda args: lambda conn, actor: reservation_store.list_for(conn, args.tenant_id)
    )
    p = group.add_parser("show", help="one reservation, with its usage so far")
    p.add_argument("reservation_id")
    p.set_defaults(
        handler=lambda args: lambda conn, actor: reservation_store.show(conn, args.reservation_id)
    )
    p = group.add_parser(
        "cancel", parents=[audited()], help="cancel a reservation that has not started"
    )
    p.add_argument("reservation_id")
    p.set_defaults(handler=_cancel)


def run(settings: Settings, args: argparse.Namespace) -> int:
    return operator_cli.run(settings, args)
