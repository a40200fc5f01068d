"""``crosslogic billing export`` and ``crosslogic billing customer``.

``export`` runs the Stripe export once (see ``crosslogic.billing.exporter``), safely beside
the billing service's own export loop and other runs: one holds PostgreSQL's advisory lock,
a second one skips. ``customer`` maps a tenant to its Stripe customer (audited), like
``PUT /admin/tenants/{id}/stripe-customer``. Each subcommand sets ``run``, the function that
runs it, so that every subcommand can keep its own way of running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from prometheus_client import CollectorRegistry

from crosslogic import operator_cli
from crosslogic.billing import customers
from crosslogic.billing.exporter import ExportMetrics, ExportResult, StripeExporter, meter_names
from crosslogic.billing.stripe_meter import StripeMeterEvents
from crosslogic.db.connection import connect
from crosslogic.errors import DomainError, Invalid, Unavailable
from crosslogic.operator_cli import Work, audited
from crosslogic.settings import Settings

# exit statuses of `billing export`, for cron wrappers
EXPORTED, FAILED, NOT_CONFIGURED, SOME_EVENTS_FAILED, BUSY = 0, 1, 2, 3, 75
_EXPORT_EPILOG = (
    "exit status: 0 everything due was sent; 1 error; 2 not configured "
    "(DB_HOST or STRIPE_SECRET_KEY missing); 3 some events failed and wait for a retry, or "
    "PostgreSQL is unavailable; "
    "75 another export is running (skipped)"
)


async def _export(settings: Settings) -> ExportResult | None:
    @asynccontextmanager
    async def fresh() -> AsyncIterator[asyncpg.Connection]:
        conn = await connect(settings)  # Unavailable at once, never a wait: cron decides
        try:
            yield conn
        finally:
            await conn.close()

    events = StripeMeterEvents(settings.stripe_secret_key, api_base=settings.stripe_api_base)
    try:
        exporter = StripeExporter(
            fresh, events, ExportMetrics(CollectorRegistry()), names=meter_names(settings)
        )
        return await exporter.export_once()
    finally:
        await events.close()


def run_export(settings: Settings, args: argparse.Namespace) -> int:
    if settings.db_host is None or not settings.stripe_secret_key:
        missing = "DB_HOST" if settings.db_host is None else "STRIPE_SECRET_KEY"
        print(f"error: the Stripe export needs {missing}", file=sys.stderr)
        return NOT_CONFIGURED
    try:
        result = asyncio.run(_export(settings))
    except Unavailable as exc:  # PostgreSQL away: like failed events, worth a later run
        print(f"error: {exc.message}", file=sys.stderr)
        return SOME_EVENTS_FAILED
    except DomainError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return FAILED
    except asyncpg.UndefinedTableError as exc:
        print(f"error: {exc}; run `crosslogic migrate` first", file=sys.stderr)
        return FAILED
    if result is None:
        print("another export is running; skipped", file=sys.stderr)
        return BUSY
    print(json.dumps(result.as_json(), indent=2))
    return SOME_EVENTS_FAILED if result.failed else EXPORTED


def _customer(args: argparse.Namespace) -> Work:
    if args.clear and args.customer is not None:
        raise Invalid("Give a CUSTOMER_ID or --clear, not both.", param="stripe_customer_id")
    body = {"stripe_customer_id": None if args.clear else args.customer}
    if not args.clear and args.customer is None:
        body = {}  # the parser's own message: required
    chosen = customers.customer_change(body)
    return lambda conn, actor: customers.set_customer(
        conn, actor=actor, tenant_id=args.tenant_id, stripe_customer_id=chosen
    )


def add_export(group: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = group.add_parser(
        "export", help="send usage_hourly to Stripe as meter events, once", epilog=_EXPORT_EPILOG
    )
    p.set_defaults(run=run_export)


def add_customer(group: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = group.add_parser(
        "customer", parents=[audited()], help="map a tenant to its Stripe customer (cus_...)"
    )
    p.add_argument("tenant_id")
    p.add_argument("customer", nargs="?", default=None, metavar="CUSTOMER_ID")
    p.add_argument("--clear", action="store_true", help="unmap: the tenant is not exported")
    p.set_defaults(run=operator_cli.run, handler=_customer)
