"""Running an operator command (``crosslogic tenants|envs|keys|audit|limits ...``).

Each command validates its arguments without I/O (with the admin API's request parsers, so
both refuse the same things with the same messages) and returns the work to run; this runs
it on one PostgreSQL connection in one transaction, which an error rolls back, and prints
the result as JSON. It is the command line's one error edge: a DomainError (a refusal, or
PostgreSQL being away) is ``error: <message>`` on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from crosslogic.db.connection import connect
from crosslogic.db.errors import postgres_errors
from crosslogic.errors import DomainError
from crosslogic.settings import Settings

Result = dict[str, Any] | list[dict[str, Any]]
# What a command does once connected: (connection, audit actor) -> result.
Work = Callable[[asyncpg.Connection, str], Awaitable[Result]]
# A command: parsed arguments -> its work (or DomainError raised, before any I/O).
Command = Callable[[argparse.Namespace], Work]


def integer(text: str) -> int | str:
    """``text`` as an int; anything else as is, for the API's parser to refuse with its
    own message."""
    try:
        return int(text)
    except ValueError:
        return text


def audited() -> argparse.ArgumentParser:
    """A parent parser for commands that change something: ``--actor``."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--actor", metavar="NAME", help="name recorded in the audit log (default: login user)"
    )
    return parent


def actor_of(args: argparse.Namespace) -> str:
    named = (getattr(args, "actor", None) or "").strip()[:100]
    if not named:
        try:
            named = getpass.getuser()
        except (OSError, KeyError):  # no login name (a container without a passwd entry)
            named = "unknown"
    return f"cli:{named}"


async def _execute(settings: Settings, work: Work, actor: str) -> Result:
    with postgres_errors():
        conn = await connect(settings)
        try:
            async with conn.transaction():
                return await work(conn, actor)
        finally:
            await conn.close()


def _plaintext(result: dict[str, Any]) -> str:
    created = result.get("new", result)  # a rotation returns {"new": ..., "old": ...}
    return str(created["key"])


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``args.handler``'s work; print its result (or, with ``--quiet``, only the new
    plaintext key). Exit status 0, 1 for a refusal, 2 without a database configured."""
    if settings.db_host is None:
        print(
            f"crosslogic {args.command} needs DB_HOST (and DB_PORT, DB_USER, DB_PASSWORD, "
            "DB_NAME) of the control plane's PostgreSQL",
            file=sys.stderr,
        )
        return 2
    try:
        work = args.handler(args)
        result = asyncio.run(_execute(settings, work, actor_of(args)))
    except DomainError as exc:  # refused, not found, conflicting, or PostgreSQL away
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except asyncpg.UndefinedTableError as exc:
        print(f"error: {exc}; run `crosslogic migrate` first", file=sys.stderr)
        return 1
    if getattr(args, "quiet", False) and isinstance(result, dict):
        print(_plaintext(result))
    else:
        print(json.dumps(result, indent=2, default=str))
    return 0
