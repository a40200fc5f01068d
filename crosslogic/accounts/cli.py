"""The operator command line for tenants, environments, API keys and the audit log.

It calls the same operations as the admin API, directly on PostgreSQL, one transaction per
command, and validates input with the same request parsers (fed the JSON body the API would
get), so the command line and the API refuse the same things with the same messages.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from crosslogic.accounts import operations as ops
from crosslogic.accounts import requests as parse
from crosslogic.db.connection import connect
from crosslogic.errors import Unavailable
from crosslogic.openai_errors import ApiError, invalid_request
from crosslogic.settings import Settings

COMMANDS = ("tenants", "envs", "keys", "audit")

Result = dict[str, Any] | list[dict[str, Any]] | ApiError
# What a command does once connected: (connection, audit actor) -> result.
Work = Callable[[asyncpg.Connection, str], Awaitable[Result]]

_DURATION = re.compile(r"^(\d{1,9})([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> int | None:
    """``30s``, ``5m``, ``1h``, ``2d`` or plain seconds; None if it is none of those."""
    match = _DURATION.match(text.strip())
    return None if match is None else int(match[1]) * _UNIT_S[match[2]]


def _integer(text: str) -> int | str:
    # a non-integer goes to the parser as is, which refuses it with the API's message
    try:
        return int(text)
    except ValueError:
        return text


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",")]


def actor_of(args: argparse.Namespace) -> str:
    named = (getattr(args, "actor", None) or "").strip()[:100]
    if not named:
        try:
            named = getpass.getuser()
        except (OSError, KeyError):  # no login name (a container without a passwd entry)
            named = "unknown"
    return f"cli:{named}"


# -- commands: each validates its arguments without I/O and returns the work to run ------


def _tenants_create(args: argparse.Namespace) -> Work | ApiError:
    body = {"name": args.name} | ({} if args.plan is None else {"plan": args.plan})
    parsed = parse.tenant_name(body)
    if isinstance(parsed, ApiError):
        return parsed
    name, plan = parsed
    return lambda conn, actor: ops.create_tenant(conn, actor=actor, name=name, plan=plan)


def _tenants_list(args: argparse.Namespace) -> Work | ApiError:
    return lambda conn, actor: ops.list_tenants(conn)


def _tenants_show(args: argparse.Namespace) -> Work | ApiError:
    return lambda conn, actor: ops.get_tenant(conn, args.tenant_id)


def _tenant_status(status: str) -> Callable[[argparse.Namespace], Work | ApiError]:
    def command(args: argparse.Namespace) -> Work | ApiError:
        return lambda conn, actor: ops.set_tenant_status(
            conn, actor=actor, tenant_id=args.tenant_id, status=status
        )

    return command


def _envs_create(args: argparse.Namespace) -> Work | ApiError:
    name = parse.environment_name({"name": args.name})
    if isinstance(name, ApiError):
        return name
    return lambda conn, actor: ops.create_environment(
        conn, actor=actor, tenant_id=args.tenant_id, name=name
    )


def _envs_list(args: argparse.Namespace) -> Work | ApiError:
    async def work(conn: asyncpg.Connection, actor: str) -> Result:
        tenant = await ops.get_tenant(conn, args.tenant_id)  # as the API: unknown is an error
        if isinstance(tenant, ApiError):
            return tenant
        return await ops.list_environments(conn, tenant["id"])

    return work


def _environment_status(status: str) -> Callable[[argparse.Namespace], Work | ApiError]:
    def command(args: argparse.Namespace) -> Work | ApiError:
        return lambda conn, actor: ops.set_environment_status(
            conn, actor=actor, environment_id=args.environment_id, status=status
        )

    return command


def _keys_create(args: argparse.Namespace) -> Work | ApiError:
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
        body["rate_limit_rpm"] = _integer(args.rpm)
    spec = parse.key_spec(body, now=datetime.now(UTC))
    if isinstance(spec, ApiError):
        return spec
    return lambda conn, actor: ops.create_key(
        conn, actor=actor, environment_id=args.environment_id, spec=spec
    )


def _keys_list(args: argparse.Namespace) -> Work | ApiError:
    return lambda conn, actor: ops.list_keys(
        conn, tenant_id=args.tenant, environment_id=args.environment
    )


def _keys_show(args: argparse.Namespace) -> Work | ApiError:
    return lambda conn, actor: ops.get_key(conn, args.key_id)


def _keys_rotate(args: argparse.Namespace) -> Work | ApiError:
    seconds = duration_seconds(args.grace)
    if seconds is None:
        return invalid_request(
            f"'--grace' must be a duration like 30s, 5m, 1h or 2d, or seconds; got '{args.grace}'.",
            param="grace_seconds",
        )
    grace = parse.grace_seconds({"grace_seconds": seconds})
    if isinstance(grace, ApiError):
        return grace
    return lambda conn, actor: ops.rotate_key(
        conn, actor=actor, key_id=args.key_id, grace_seconds=grace
    )


def _keys_revoke(args: argparse.Namespace) -> Work | ApiError:
    return lambda conn, actor: ops.revoke_key(conn, actor=actor, key_id=args.key_id)


def _audit(args: argparse.Namespace) -> Work | ApiError:
    limit = _integer(args.limit)
    if not isinstance(limit, int):  # the same answer and clamping as GET /admin/audit
        return invalid_request("'limit' must be an integer.", param="limit")
    limit = min(max(limit, 1), 1000)
    return lambda conn, actor: ops.audit_entries(conn, limit=limit, entity_id=args.entity)


# -- parsers -----------------------------------------------------------------------------


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``tenants``, ``envs``, ``keys`` and ``audit``; each leaf sets ``handler``."""
    audited = argparse.ArgumentParser(add_help=False)
    audited.add_argument(
        "--actor", metavar="NAME", help="name recorded in the audit log (default: login user)"
    )
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument(
        "--quiet", action="store_true", help="print only the new plaintext key (for scripts)"
    )

    tenants = sub.add_parser("tenants", help="create, list, suspend tenants").add_subparsers(
        dest="action", required=True
    )
    p = tenants.add_parser("create", parents=[audited], help="create a tenant")
    p.add_argument("name")
    p.add_argument("--plan", default=None, help="billing plan (default: default)")
    p.set_defaults(handler=_tenants_create)
    tenants.add_parser("list", help="every tenant").set_defaults(handler=_tenants_list)
    p = tenants.add_parser("show", help="one tenant")
    p.add_argument("tenant_id")
    p.set_defaults(handler=_tenants_show)
    for action, status, text in (
        ("suspend", "suspended", "refuse every key of the tenant"),
        ("activate", "active", "accept the tenant's keys again"),
    ):
        p = tenants.add_parser(action, parents=[audited], help=text)
        p.add_argument("tenant_id")
        p.set_defaults(handler=_tenant_status(status))

    envs = sub.add_parser("envs", help="create, list, disable environments").add_subparsers(
        dest="action", required=True
    )
    p = envs.add_parser("create", parents=[audited], help="create an environment of a tenant")
    p.add_argument("tenant_id")
    p.add_argument("name")
    p.set_defaults(handler=_envs_create)
    p = envs.add_parser("list", help="a tenant's environments")
    p.add_argument("tenant_id")
    p.set_defaults(handler=_envs_list)
    for action, status, text in (
        ("disable", "disabled", "refuse every key of the environment"),
        ("enable", "active", "accept the environment's keys again"),
    ):
        p = envs.add_parser(action, parents=[audited], help=text)
        p.add_argument("environment_id")
        p.set_defaults(handler=_environment_status(status))

    keys = sub.add_parser("keys", help="create, rotate, revoke API keys").add_subparsers(
        dest="action", required=True
    )
    p = keys.add_parser("create", parents=[audited, quiet], help="create a key (shown once)")
    p.add_argument("environment_id")
    p.add_argument("--name", default=None, help="a label shown in lists and the audit log")
    p.add_argument("--expires-at", default=None, metavar="ISO", help="ISO 8601 time (UTC if naive)")
    p.add_argument("--models", default=None, metavar="M1,M2", help="allowed models (default: all)")
    p.add_argument(
        "--regions", default=None, metavar="R1,R2", help="allowed regions (default: all)"
    )
    p.add_argument(
        "--rpm", default=None, metavar="N", help="requests per minute (default: service)"
    )
    p.set_defaults(handler=_keys_create)
    p = keys.add_parser("list", help="keys, optionally of one tenant or environment")
    p.add_argument("--tenant", default=None, metavar="ID")
    p.add_argument("--env", dest="environment", default=None, metavar="ID")
    p.set_defaults(handler=_keys_list)
    p = keys.add_parser("show", help="one key (never its secret)")
    p.add_argument("key_id")
    p.set_defaults(handler=_keys_show)
    p = keys.add_parser(
        "rotate", parents=[audited, quiet], help="new key; the old one works for --grace"
    )
    p.add_argument("key_id")
    p.add_argument("--grace", default="1h", help="30s, 5m, 1h, 2d or seconds (default: 1h)")
    p.set_defaults(handler=_keys_rotate)
    p = keys.add_parser("revoke", parents=[audited], help="refuse the key from now on")
    p.add_argument("key_id")
    p.set_defaults(handler=_keys_revoke)

    p = sub.add_parser("audit", help="the audit log, newest first")
    p.add_argument("--limit", default="100", metavar="N", help="entries, 1-1000 (default: 100)")
    p.add_argument(
        "--entity", default=None, metavar="ID", help="only this tenant id, environment id or key_id"
    )
    p.set_defaults(handler=_audit)


# -- running -----------------------------------------------------------------------------


async def _execute(settings: Settings, work: Work, actor: str) -> Result:
    """Run ``work`` in one transaction; an ApiError result rolls it back."""
    conn = await connect(settings)
    try:
        return await ops.atomically(conn, lambda c: work(c, actor))
    finally:
        await conn.close()


def _plaintext(result: dict[str, Any]) -> str:
    created = result.get("new", result)  # a rotation returns {"new": ..., "old": ...}
    return str(created["key"])


def run(settings: Settings, args: argparse.Namespace) -> int:
    if settings.db_host is None:
        print(
            f"crosslogic {args.command} needs DB_HOST (and DB_PORT, DB_USER, DB_PASSWORD, "
            "DB_NAME) of the control plane's PostgreSQL",
            file=sys.stderr,
        )
        return 2
    work = args.handler(args)
    if isinstance(work, ApiError):
        print(f"error: {work.message}", file=sys.stderr)
        return 1
    try:
        result = asyncio.run(_execute(settings, work, actor_of(args)))
    except Unavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except asyncpg.UndefinedTableError as exc:
        print(f"error: {exc}; run `crosslogic migrate` first", file=sys.stderr)
        return 1
    if isinstance(result, ApiError):
        print(f"error: {result.message}", file=sys.stderr)
        return 1
    if getattr(args, "quiet", False) and isinstance(result, dict):
        print(_plaintext(result))
    else:
        print(json.dumps(result, indent=2, default=str))
    return 0
