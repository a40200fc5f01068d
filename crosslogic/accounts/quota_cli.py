"""The operator command line for plans and credits: ``crosslogic plans list|show|set|assign``
and ``crosslogic credits grant|list|balance``.

Like ``crosslogic tenants ...`` it runs the admin API's operations directly on PostgreSQL, one
transaction per command, validating with the API's parsers (fed the JSON body the API would
get), so both refuse the same things with the same messages.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from crosslogic import operator_cli
from crosslogic.accounts import credits, plans
from crosslogic.operator_cli import Work, audited, integer
from crosslogic.settings import Settings

COMMANDS = ("plans", "credits")
_CLEAR = "none"  # ``--billing-mode none`` / ``--spend-cap none``: back to the default


def _plan_set(args: argparse.Namespace) -> Work:
    name = plans.plan_name(args.name)
    body: dict[str, Any] = {}
    if args.description is not None:
        body["description"] = args.description
    if args.billing_mode is not None:
        body["billing_mode"] = args.billing_mode
    if args.allowance_tokens is not None:
        body["monthly_allowance_tokens"] = integer(args.allowance_tokens)
    if args.allowance_usd is not None:
        body["monthly_allowance_usd"] = args.allowance_usd
    spec = plans.plan_spec(body)
    return lambda conn, actor: plans.set_plan(conn, actor=actor, name=name, spec=spec)


def _assign(args: argparse.Namespace) -> Work:
    body: dict[str, Any] = {}
    if args.plan is not None:
        body["plan"] = args.plan
    if args.billing_mode is not None:
        body["billing_mode"] = None if args.billing_mode == _CLEAR else args.billing_mode
    if args.spend_cap is not None:
        body["monthly_spend_cap_usd"] = None if args.spend_cap == _CLEAR else args.spend_cap
    change = plans.billing_change(body)
    return lambda conn, actor: plans.set_billing(
        conn, actor=actor, tenant_id=args.tenant_id, change=change
    )


def _grant(args: argparse.Namespace) -> Work:
    body: dict[str, Any] = {"amount_usd": args.amount_usd}
    if args.expires_at is not None:
        body["expires_at"] = args.expires_at
    if args.note is not None:
        body["note"] = args.note
    spec = credits.grant_spec(body, now=datetime.now(UTC))
    return lambda conn, actor: credits.grant(conn, actor=actor, tenant_id=args.tenant_id, spec=spec)


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``plans`` and ``credits`` with their subcommands; each leaf sets ``handler``."""
    group = sub.add_parser(
        "plans", help="plans (allowances, billing mode) and a tenant's plan, mode and cap"
    ).add_subparsers(dest="action", required=True)
    p = group.add_parser("list", help="every plan")
    p.set_defaults(handler=lambda args: lambda conn, actor: plans.list_plans(conn))
    p = group.add_parser("show", help="one plan")
    p.add_argument("name")
    p.set_defaults(handler=lambda args: lambda conn, actor: plans.get_plan(conn, args.name))
    p = group.add_parser("set", parents=[audited()], help="create or replace a plan")
    p.add_argument("name")
    p.add_argument("--description", default=None)
    p.add_argument("--billing-mode", default=None, metavar="prepaid|postpaid")
    p.add_argument("--allowance-tokens", default=None, metavar="N", help="free tokens a month")
    p.add_argument("--allowance-usd", default=None, metavar="USD", help="free USD a month")
    p.set_defaults(handler=_plan_set)
    p = group.add_parser(
        "assign", parents=[audited()], help="set a tenant's plan, billing mode or spend cap"
    )
    p.add_argument("tenant_id")
    p.add_argument("--plan", default=None)
    p.add_argument(
        "--billing-mode", default=None, metavar="prepaid|postpaid|none", help="none: the plan's"
    )
    p.add_argument(
        "--spend-cap", default=None, metavar="USD|none", help="monthly cap of a postpaid tenant"
    )
    p.set_defaults(handler=_assign)

    group = sub.add_parser(
        "credits", help="grant prepaid credits, list grants, read a balance"
    ).add_subparsers(dest="action", required=True)
    p = group.add_parser("grant", parents=[audited()], help="add prepaid credits to a tenant")
    p.add_argument("tenant_id")
    p.add_argument("amount_usd", metavar="USD")
    p.add_argument("--expires-at", default=None, metavar="ISO8601")
    p.add_argument("--note", default=None)
    p.set_defaults(handler=_grant)
    p = group.add_parser("list", help="a tenant's grants")
    p.add_argument("tenant_id")
    p.set_defaults(
        handler=lambda args: lambda conn, actor: credits.list_grants(conn, args.tenant_id)
    )
    p = group.add_parser("balance", help="a tenant's balance, allowance and quota state")
    p.add_argument("tenant_id")
    p.set_defaults(handler=lambda args: lambda conn, actor: credits.balance(conn, args.tenant_id))


def run(settings: Settings, args: argparse.Namespace) -> int:
    return operator_cli.run(settings, args)
