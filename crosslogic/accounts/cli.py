"""The operator command line for tenants, environments, API keys and the audit log.

It calls the same operations as the admin API, directly on PostgreSQL, one transaction per
command (see ``crosslogic.operator_cli``), and validates input with the same request parsers
(fed the JSON body the API would get), so the command line and the API refuse the same
things with the same messages.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from crosslogic import audit, operator_cli
from crosslogic.accounts import api_keys, environments, tenants
from crosslogic.accounts import requests as parse
from crosslogic.errors import Invalid
from crosslogic.operator_cli import Command, Work, audited, integer
from crosslogic.settings import Settings

COMMANDS = ("tenants", "envs", "keys", "audit")

_DURATION = re.compile(r"^(\d{1,9})([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# (connection, actor, id, status) -> the changed row: tenants.set_status or environments'
StatusSetter = Callable[[asyncpg.Connection, str, str, str], Awaitable[dict[str, Any]]]


def duration_seconds(text: str) -> int | None:
    """``30s``, ``5m``, ``1h``, ``2d`` or plain seconds; None if it is none of those."""
    match = _DURATION.match(text.strip())
    return None if match is None else int(match[1]) * _UNIT_S[match[2]]


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",")]


# -- commands: each validates its arguments without I/O and returns the work to run ------


def _tenants_create(args: argparse.Namespace) -> Work:
    body = {"name": args.name} | ({} if args.plan is None else {"plan": args.plan})
    name, plan = parse.tenant_name(body)
    return lambda conn, actor: tenants.create(conn, actor=actor, name=name, plan=plan)


def _envs_create(args: argparse.Namespace) -> Work:
    name = parse.environment_name({"name": args.name})
    return lambda conn, actor: environments.create(
        conn, actor=actor, tenant_id=args.tenant_id, name=name
    )


def _envs_list(args: argparse.Namespace) -> Work:
    return lambda conn, actor: environments.of_tenant(conn, args.tenant_id)


def _status(setter: StatusSetter, status: str) -> Command:
    def command(args: argparse.Namespace) -> Work:
        return lambda conn, actor: setter(conn, actor, args.ident, status)

    return command


async def _set_tenant(conn: asyncpg.Connection, actor: str, ident: str, status: str) -> Any:
    return await tenants.set_status(conn, actor=actor, tenant_id=ident, status=status)


async def _set_environment(conn: asyncpg.Connection, actor: str, ident: str, status: str) -> Any:
    return await environments.set_status(conn, actor=actor, environment_id=ident, status=status)


def _keys_create(args: argparse.Namespace) -> Work:
    body: dict[str, Any] = {}
    if args.name is not None:
        body["name"] = args.name
    if args.expires_at is not None:
        body["expires_at"] = args.expires_at
    if args.models is not None:
        body["allowed_models"] = _names(args.models)
    if args.regions is not None:
        body["allowed_regions"] = _names(args.regions)
    if args.rpm is not None:
        body["rate_limit_rpm"] = integer(args.rpm)
    if args.default_region is not None:
        body["default_region"] = args.default_region
    spec = parse.key_spec(body, now=datetime.now(UTC))
    return lambda conn, actor: api_keys.create(
        conn, actor=actor, environment_id=args.environment_id, spec=spec
    )


def _keys_list(args: argparse.Namespace) -> Work:
    tenant, environment = args.tenant, args.environment
    return lambda c, a: api_keys.list_some(c, tenant_id=tenant, environment_id=environment)


def _keys_revoke(args: argparse.Namespace) -> Work:
    return lambda conn, actor: api_keys.revoke(conn, actor=actor, key_id=args.key_id)


def _keys_rotate(args: argparse.Namespace) -> Work:
    seconds = duration_seconds(args.grace)
    if seconds is None:
        raise Invalid(
            f"'--grace' must be a duration like 30s, 5m, 1h or 2d, or seconds; got '{args.grace}'.",
            param="grace_seconds",
        )
    grace = parse.grace_seconds({"grace_seconds": seconds})
    return lambda conn, actor: api_keys.rotate(
        conn, actor=actor, key_id=args.key_id, grace_seconds=grace
    )


def _audit(args: argparse.Namespace) -> Work:
    limit = parse.audit_limit(args.limit)  # the same answer and clamping as GET /admin/audit
    return lambda conn, actor: audit.entries(conn, limit=limit, entity_id=args.entity)


# -- parsers -----------------------------------------------------------------------------


def _leaf(
    group: argparse._SubParsersAction,  # type: ignore[type-arg]
    action: str,
    handler: Command,
    *,
    help: str,
    positional: tuple[str, ...] = (),
    parents: tuple[argparse.ArgumentParser, ...] = (),
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(action, parents=list(parents), help=help)
    for name in positional:
        parser.add_argument(name)
    parser.set_defaults(handler=handler)
    return parser


# (command, entity id's name, the setter, (action, status, help) of each change)
_STATUS_CHANGES: tuple[tuple[str, str, StatusSetter, tuple[tuple[str, str, str], ...]], ...] = (
    (
        "tenants",
        "tenant_id",
        _set_tenant,
        (
            ("suspend", "suspended", "refuse every key of the tenant"),
            ("activate", "active", "accept the tenant's keys again"),
        ),
    ),
    (
        "envs",
        "environment_id",
        _set_environment,
        (
            ("disable", "disabled", "refuse every key of the environment"),
            ("enable", "active", "accept the environment's keys again"),
        ),
    ),
)


def _tenants(group: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = _leaf(group, "create", _tenants_create, help="create a tenant", parents=(audited(),))
    p.add_argument("name")
    p.add_argument("--plan", default=None, help="billing plan (default: default)")
    _leaf(group, "list", lambda args: lambda c, a: tenants.list_all(c), help="every tenant")
    show = _leaf(
        group, "show", lambda args: lambda c, a: tenants.get(c, args.tenant_id), help="one tenant"
    )
    show.add_argument("tenant_id")


def _envs(group: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    creating = "create an environment of a tenant"
    p = _leaf(group, "create", _envs_create, help=creating, parents=(audited(),))
    p.add_argument("tenant_id")
    p.add_argument("name")
    _leaf(group, "list", _envs_list, help="a tenant's environments").add_argument("tenant_id")


def _keys(group: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument(
        "--quiet", action="store_true", help="print only the new plaintext key (for scripts)"
    )
    p = _leaf(
        group,
        "create",
        _keys_create,
        help="create a key (shown once)",
        positional=("environment_id",),
        parents=(audited(), quiet),
    )
    p.add_argument("--name", default=None, help="a label shown in lists and the audit log")
    p.add_argument("--expires-at", default=None, metavar="ISO", help="ISO 8601 time (UTC if naive)")
    p.add_argument("--models", default=None, metavar="M1,M2", help="allowed models (default: all)")
    p.add_argument(
        "--regions", default=None, metavar="R1,R2", help="allowed regions (default: all)"
    )
    p.add_argument(
        "--rpm", default=None, metavar="N", help="requests per minute (default: service)"
    )
    p.add_argument(
        "--default-region",
        default=None,
        metavar="R",
        help="the region its requests prefer when they name none (default: none)",
    )
    listing = _leaf(group, "list", _keys_list, help="keys, optionally of one tenant or environment")
    listing.add_argument("--tenant", default=None, metavar="ID")
    listing.add_argument("--env", dest="environment", default=None, metavar="ID")
    showing = "one key (never its secret)"
    _leaf(
        group,
        "show",
        lambda args: lambda c, a: api_keys.get(c, args.key_id),
        help=showing,
        positional=("key_id",),
    )
    rotating = "new key; the old one works for --grace"
    p = _leaf(
        group,
        "rotate",
        _keys_rotate,
        help=rotating,
        positional=("key_id",),
        parents=(audited(), quiet),
    )
    p.add_argument("--grace", default="1h", help="30s, 5m, 1h, 2d or seconds (default: 1h)")
    revoking = "refuse the key from now on"
    _leaf(
        group, "revoke", _keys_revoke, help=revoking, positional=("key_id",), parents=(audited(),)
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``tenants``, ``envs``, ``keys`` and ``audit``; each leaf sets ``handler``."""
    groups = {}
    for command, text, build in (
        ("tenants", "create, list, suspend tenants", _tenants),
        ("envs", "create, list, disable environments", _envs),
        ("keys", "create, rotate, revoke API keys", _keys),
    ):
        groups[command] = sub.add_parser(command, help=text).add_subparsers(
            dest="action", required=True
        )
        build(groups[command])
    for command, ident, setter, changes in _STATUS_CHANGES:
        for action, status, text in changes:
            p = _leaf(
                groups[command], action, _status(setter, status), help=text, parents=(audited(),)
            )
            p.add_argument("ident", metavar=ident)
    p = sub.add_parser("audit", help="the audit log, newest first")
    p.add_argument("--limit", default="100", metavar="N", help="entries, 1-1000 (default: 100)")
    p.add_argument(
        "--entity", default=None, metavar="ID", help="only this tenant id, environment id or key_id"
    )
    p.set_defaults(handler=_audit)


def run(settings: Settings, args: argparse.Namespace) -> int:
    return operator_cli.run(settings, args)
