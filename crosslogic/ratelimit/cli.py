"""The operator command line for rate limits: ``crosslogic limits set|list|delete``.

Like ``crosslogic tenants ...`` it runs the admin API's operations directly on PostgreSQL, one
transaction per command, and validates with the API's parser (fed the JSON body the API would
get), so both refuse the same things with the same messages.
"""

from __future__ import annotations

import argparse
from typing import Any

from crosslogic import operator_cli
from crosslogic.operator_cli import Work, audited, integer
from crosslogic.ratelimit import table_store as ops
from crosslogic.ratelimit.config import parse_limit
from crosslogic.settings import Settings

COMMANDS = ("limits",)

# option -> field of the request body
_NUMBERS = {
    "rps": "requests_per_second",
    "rpm": "requests_per_minute",
    "tpm": "tokens_per_minute",
    "tpd": "tokens_per_day",
}


def _set(args: argparse.Namespace) -> Work:
    body: dict[str, Any] = {"scope": args.scope}
    for name in ("subject", "layer", "fail_mode"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    for option, field in _NUMBERS.items():
        if getattr(args, option) is not None:
            body[field] = integer(getattr(args, option))
    row = parse_limit(body)
    return lambda conn, actor: ops.set_limit(conn, actor=actor, row=row)


def _list(args: argparse.Namespace) -> Work:
    scope = ops.scope_filter(args.scope)
    subject = args.subject or None
    return lambda conn, actor: ops.list_limits(conn, scope=scope, subject=subject)


def _delete(args: argparse.Namespace) -> Work:
    limit_id = ops.limit_id_of(args.limit_id)
    return lambda conn, actor: ops.delete_limit(conn, actor=actor, limit_id=limit_id)


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``limits`` with ``set``, ``list`` and ``delete``; each leaf sets ``handler``."""
    limits = sub.add_parser(
        "limits", help="set, list, delete rate limits (per plan, tenant, environment, key)"
    ).add_subparsers(dest="action", required=True)

    p = limits.add_parser(
        "set", parents=[audited()], help="create or replace the limit of a scope/subject/layer"
    )
    p.add_argument(
        "--scope", required=True, metavar="SCOPE", help="global, plan, tenant, environment or key"
    )
    p.add_argument(
        "--subject",
        default=None,
        metavar="X",
        help="plan name, tenant or environment id, key_id or key uuid (none for global)",
    )
    p.add_argument(
        "--layer",
        default=None,
        metavar="LAYER",
        help="tenant, environment or key: which layer a plan default limits "
        "(default: the scope itself)",
    )
    for option, field in _NUMBERS.items():
        p.add_argument(f"--{option}", default=None, metavar="N", help=field.replace("_", " "))
    p.add_argument(
        "--fail-mode",
        default=None,
        metavar="open|closed",
        help="when Redis cannot answer: admit (open, default) or refuse (closed)",
    )
    p.set_defaults(handler=_set)

    p = limits.add_parser("list", help="limits, optionally of one scope or subject")
    p.add_argument("--scope", default=None, metavar="SCOPE")
    p.add_argument("--subject", default=None, metavar="X", help="also a key's key_id")
    p.set_defaults(handler=_list)

    p = limits.add_parser("delete", parents=[audited()], help="remove a limit by its id")
    p.add_argument("limit_id", metavar="ID")
    p.set_defaults(handler=_delete)


def run(settings: Settings, args: argparse.Namespace) -> int:
    return operator_cli.run(settings, args)
