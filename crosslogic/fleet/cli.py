"""The operator command line of the fleet: ``crosslogic nodes list|drain|remove`` and
``crosslogic nodes tokens create|list|revoke``.

Like ``crosslogic tenants ...`` it runs the admin API's operations directly on PostgreSQL, one
transaction per command (``crosslogic.operator_cli``), validating with the API's parsers (fed
the JSON body the API would get), so both refuse the same things with the same messages.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from crosslogic import operator_cli
from crosslogic.fleet import listing, nodes, tokens
from crosslogic.fleet.requests import parse_token_spec
from crosslogic.operator_cli import Command, Work, audited
from crosslogic.settings import Settings

COMMANDS = ("nodes",)


def _list(args: argparse.Namespace) -> Work:
    timeout: float = args.heartbeat_timeout
    return lambda conn, actor: listing.list_nodes(conn, heartbeat_timeout=timeout)


def _on_node(change: Callable[..., Awaitable[dict[str, Any]]]) -> Command:
    """The command that runs ``change`` (drain, remove) on the node ``node_id``."""
    return lambda args: lambda conn, actor: change(conn, actor=actor, node_id=args.node_id)


def _token_create(args: argparse.Namespace) -> Work:
    body: dict[str, Any] = {"name": args.name}
    for field in ("provider", "region"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    spec = parse_token_spec(body)
    return lambda conn, actor: tokens.create(conn, actor=actor, spec=spec)


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``nodes`` with its subcommands; each leaf sets ``handler``."""
    group = sub.add_parser(
        "nodes", help="the GPU node registry: list, drain, remove; registration tokens"
    ).add_subparsers(dest="action", required=True)
    p = group.add_parser("list", help="every node with its metadata, load and state")
    p.set_defaults(handler=_list)
    for name, change, summary in (
        ("drain", nodes.drain, "no new requests; removed once in-flight ones end"),
        ("remove", nodes.remove, "out of the routing table now and for good"),
    ):
        p = group.add_parser(name, parents=[audited()], help=summary)
        p.add_argument("node_id")
        p.set_defaults(handler=_on_node(change))

    group = group.add_parser(
        "tokens", help="registration tokens: what nodes register with"
    ).add_subparsers(dest="token_action", required=True)
    p = group.add_parser(
        "create", parents=[audited()], help="a new token (shown once), optionally scoped"
    )
    p.add_argument("name")
    p.add_argument("--provider", default=None, help="registers nodes of this provider only")
    p.add_argument("--region", default=None, help="registers nodes of this region only")
    p.set_defaults(handler=_token_create)
    p = group.add_parser("list", help="every token (never its secret)")
    p.set_defaults(handler=lambda args: lambda conn, actor: tokens.list_tokens(conn))
    p = group.add_parser("revoke", parents=[audited()], help="the token registers no more")
    p.add_argument("token_id")
    p.set_defaults(
        handler=lambda args: (
            lambda conn, actor: tokens.revoke(conn, actor=actor, token_id=args.token_id)
        )
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    args.heartbeat_timeout = settings.node_heartbeat_timeout
    return operator_cli.run(settings, args)
