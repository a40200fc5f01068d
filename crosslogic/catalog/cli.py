"""The operator command line of the catalog: ``crosslogic models|regions|prices|tenant-prices``.

Like ``crosslogic tenants ...`` it runs the admin API's operations directly on PostgreSQL, one
transaction per command (``crosslogic.operator_cli``), and validates with the API's parsers
(fed the JSON body the API would get), so both refuse the same things with the same messages.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from crosslogic import operator_cli
from crosslogic.catalog import models, prices, regions
from crosslogic.catalog import requests as parse
from crosslogic.contracts.routing import STRATEGIES
from crosslogic.operator_cli import Work, audited, integer
from crosslogic.settings import Settings

COMMANDS = ("models", "regions", "prices", "tenant-prices")

# option -> field of the request body
_RATES = {"prompt": "prompt_per_mtok", "completion": "completion_per_mtok"}
_RATES_ALL = {**_RATES, "embedding": "embedding_per_mtok"}


def _body(args: argparse.Namespace, options: dict[str, str]) -> dict[str, Any]:
    """The request body of the options given (prices stay text: the parser reads them)."""
    return {
        field: getattr(args, option)
        for option, field in options.items()
        if getattr(args, option) is not None
    }


def _models_create(args: argparse.Namespace) -> Work:
    body = {"name": args.name} | _body(
        args, {"family": "family", "lb_strategy": "lb_strategy", **_RATES_ALL}
    )
    if args.context_length is not None:
        body["context_length"] = integer(args.context_length)
    spec = parse.model_create(body)
    return lambda conn, actor: models.create(conn, actor=actor, spec=spec)


def _models_update(args: argparse.Namespace) -> Work:
    body = _body(args, {"status": "status", "lb_strategy": "lb_strategy"})
    if args.context_length is not None:
        body["context_length"] = integer(args.context_length)
    change = parse.model_update(body)
    return lambda conn, actor: models.update(conn, actor=actor, model=args.model, change=change)


def _models_deprecate(args: argparse.Namespace) -> Work:
    change = parse.model_update({"status": "deprecated"})
    return lambda conn, actor: models.update(conn, actor=actor, model=args.model, change=change)


def _regions_create(args: argparse.Namespace) -> Work:
    body = {"code": args.code} | _body(
        args, {"name": "name", "provider": "provider", "multiplier": "price_multiplier"}
    )
    spec = parse.region_create(body)
    return lambda conn, actor: regions.create(conn, actor=actor, spec=spec)


def _regions_update(args: argparse.Namespace) -> Work:
    change = parse.region_update(_body(args, {"name": "name", "multiplier": "price_multiplier"}))
    return lambda conn, actor: regions.update(conn, actor=actor, code=args.code, change=change)


def _prices_add(args: argparse.Namespace) -> Work:
    body = _body(args, {**_RATES_ALL, "effective_at": "effective_at"})
    version = parse.price_version(body, now=datetime.now(UTC))
    return lambda conn, actor: prices.add_version(
        conn, actor=actor, model=args.model, version=version
    )


def _tenant_set(args: argparse.Namespace) -> Work:
    body = {"model": args.model} | _body(
        args, {**_RATES_ALL, "discount": "discount_percent", "effective_at": "effective_at"}
    )
    spec = parse.tenant_price(body, now=datetime.now(UTC))
    return lambda conn, actor: prices.set_override(
        conn, actor=actor, tenant_id=args.tenant_id, spec=spec
    )


def _tenant_remove(args: argparse.Namespace) -> Work:
    when = parse.removal_time(args.effective_at, now=datetime.now(UTC))
    return lambda conn, actor: prices.remove_override(
        conn, actor=actor, tenant_id=args.tenant_id, model=args.model, effective_at=when
    )


def _rate_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    for option, field in _RATES.items():
        parser.add_argument(
            f"--{option}", required=required, metavar="USD", help=field.replace("_", " ")
        )
    parser.add_argument(
        "--embedding", default=None, metavar="USD", help="embedding per mtok (default: --prompt)"
    )


def _strategy_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lb-strategy",
        dest="lb_strategy",
        default=None,
        metavar="|".join(STRATEGIES),
        help="how requests are spread over the model's nodes (default least_loaded)",
    )


def _effective(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--effective-at", default=None, metavar="ISO", help="from when (default now; not past)"
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the four command groups; each leaf sets ``handler``."""
    group = sub.add_parser("models", help="the model catalog").add_subparsers(
        dest="action", required=True
    )
    p = group.add_parser("create", parents=[audited()], help="add a model (first price optional)")
    p.add_argument("name")
    p.add_argument("--family", default=None)
    p.add_argument("--context-length", default=None, metavar="N")
    _strategy_option(p)
    _rate_options(p, required=False)
    p.set_defaults(handler=_models_create)
    p = group.add_parser("list", help="every model, with its price in force now")
    p.set_defaults(handler=lambda args: lambda c, a: models.list_all(c))
    p = group.add_parser("show", help="one model (by name or id)")
    p.add_argument("model")
    p.set_defaults(handler=lambda args: lambda c, a: models.get(c, args.model))
    p = group.add_parser("update", parents=[audited()], help="status, context length, strategy")
    p.add_argument("model")
    p.add_argument("--status", default=None, metavar="active|deprecated")
    p.add_argument("--context-length", default=None, metavar="N")
    _strategy_option(p)
    p.set_defaults(handler=_models_update)
    p = group.add_parser("deprecate", parents=[audited()], help="hide a model from /v1/models")
    p.add_argument("model")
    p.set_defaults(handler=_models_deprecate)

    group = sub.add_parser("regions", help="regions and their price multipliers").add_subparsers(
        dest="action", required=True
    )
    p = group.add_parser("create", parents=[audited()], help="add a region")
    p.add_argument("code")
    p.add_argument("--name", default=None, required=True)
    p.add_argument("--provider", default=None)
    p.add_argument("--multiplier", default=None, metavar="X", help="price multiplier (default 1)")
    p.set_defaults(handler=_regions_create)
    p = group.add_parser("list", help="every region")
    p.set_defaults(handler=lambda args: lambda c, a: regions.list_all(c))
    p = group.add_parser("update", parents=[audited()], help="rename, or change the multiplier")
    p.add_argument("code")
    p.add_argument("--name", default=None)
    p.add_argument("--multiplier", default=None, metavar="X")
    p.set_defaults(handler=_regions_update)

    group = sub.add_parser("prices", help="a model's list price versions").add_subparsers(
        dest="action", required=True
    )
    p = group.add_parser("add", parents=[audited()], help="a new version (USD per mtok)")
    p.add_argument("model")
    _rate_options(p, required=True)
    _effective(p)
    p.set_defaults(handler=_prices_add)
    p = group.add_parser("list", help="a model's versions, oldest first")
    p.add_argument("model")
    p.set_defaults(handler=lambda args: lambda c, a: prices.history(c, args.model))

    group = sub.add_parser(
        "tenant-prices", help="a tenant's contract prices and discounts"
    ).add_subparsers(dest="action", required=True)
    p = group.add_parser(
        "set", parents=[audited()], help="a contract price (--prompt/--completion) or --discount"
    )
    p.add_argument("tenant_id")
    p.add_argument("model")
    _rate_options(p, required=False)
    p.add_argument("--discount", default=None, metavar="PCT", help="percent off the list price")
    _effective(p)
    p.set_defaults(handler=_tenant_set)
    p = group.add_parser("list", help="a tenant's override versions")
    p.add_argument("tenant_id")
    p.add_argument("--model", default=None)
    p.set_defaults(
        handler=lambda args: (
            lambda c, a: prices.overrides(c, tenant_id=args.tenant_id, model=args.model)
        )
    )
    p = group.add_parser("remove", parents=[audited()], help="back to the list price")
    p.add_argument("tenant_id")
    p.add_argument("model")
    _effective(p)
    p.set_defaults(handler=_tenant_remove)


def run(settings: Settings, args: argparse.Namespace) -> int:
    return operator_cli.run(settings, args)
