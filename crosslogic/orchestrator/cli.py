"""The operator command line of GPU pools: ``crosslogic pools create|list|show|update|delete``.

Like ``crosslogic nodes ...`` it runs the admin API's operations directly on PostgreSQL, one
transaction per command (``crosslogic.operator_cli``), validating with the API's parser
(fed the JSON body the API would get), so both refuse the same things with the same
messages. The orchestrator itself runs as ``crosslogic orchestrator`` (ORCHESTRATOR=skypilot).
"""

from __future__ import annotations

import argparse
from typing import Any

from crosslogic import operator_cli
from crosslogic.operator_cli import Work, audited, integer
from crosslogic.orchestrator import pool_store
from crosslogic.orchestrator.pools import pool_spec
from crosslogic.settings import Settings

COMMANDS = ("pools",)
# option -> the body's field, and how the value is read
_SCALARS = (
    ("model", "model", str),
    ("region", "region", str),
    ("accelerator", "accelerator", str),
    ("gpus", "gpu_count", integer),
    ("replicas", "replicas", integer),
    ("min_replicas", "min_replicas", integer),
    ("max_replicas", "max_replicas", integer),
    ("model_source", "model_source", str),
    ("replica_tpm", "replica_tokens_per_minute", integer),
    ("scale_up_cooldown", "scale_up_cooldown_s", integer),
    ("scale_down_cooldown", "scale_down_cooldown_s", integer),
)
_LISTS = (("cloud", "clouds"), ("cloud_region", "cloud_regions"), ("vllm_arg", "vllm_args"))


def _body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for option, field, read in _SCALARS:
        value = getattr(args, option)
        if value is not None:
            body[field] = read(value)
    for option, field in _LISTS:
        if getattr(args, option):
            body[field] = list(getattr(args, option))
    for flag in ("spot", "on_demand_fallback"):
        if getattr(args, flag) is not None:
            body[flag] = getattr(args, flag)
    return body


def _create(args: argparse.Namespace) -> Work:
    spec = pool_spec({"name": args.name, **_body(args)})
    return lambda conn, actor: pool_store.create(conn, actor=actor, spec=spec)


def _update(args: argparse.Namespace) -> Work:
    body = _body(args)
    return lambda conn, actor: pool_store.update(conn, actor=actor, name=args.name, body=body)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="the model its replicas serve (a catalog model)")
    parser.add_argument("--region", help="the CrossLogic region its nodes register in")
    parser.add_argument("--accelerator", help="the GPU type, e.g. A100, H100, L4")
    parser.add_argument("--gpus", help="GPUs per replica (vLLM's tensor parallelism)")
    parser.add_argument("--replicas", help="a fixed number of replicas")
    parser.add_argument("--min-replicas", help="autoscaling: the fewest replicas")
    parser.add_argument("--max-replicas", help="autoscaling: the most replicas")
    parser.add_argument("--cloud", action="append", help="a cloud allowed (repeatable)")
    parser.add_argument(
        "--cloud-region", action="append", help="a region of that cloud allowed (repeatable)"
    )
    spot = parser.add_mutually_exclusive_group()
    spot.add_argument("--spot", action="store_true", default=None, help="spot capacity")
    spot.add_argument("--on-demand", dest="spot", action="store_false", help="on demand only")
    fallback = parser.add_mutually_exclusive_group()
    fallback.add_argument(
        "--fallback",
        dest="on_demand_fallback",
        action="store_true",
        default=None,
        help="spot, falling back to on demand when there is none (the default)",
    )
    fallback.add_argument(
        "--no-fallback",
        dest="on_demand_fallback",
        action="store_false",
        help="spot only: no on-demand fallback",
    )
    parser.add_argument("--model-source", help="what vLLM loads (default: the model's name)")
    parser.add_argument(
        "--vllm-arg", action="append", help="an argument for vLLM (repeatable, in order)"
    )
    parser.add_argument(
        "--replica-tpm", help="tokens per minute one replica serves (reserved capacity)"
    )
    parser.add_argument("--scale-up-cooldown", help="seconds between scale-ups")
    parser.add_argument("--scale-down-cooldown", help="seconds between scale-downs")


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``pools`` with its subcommands; each leaf sets ``handler``."""
    group = sub.add_parser(
        "pools", help="GPU pools: the capacity wanted per model, launched through SkyPilot"
    ).add_subparsers(dest="action", required=True)
    p = group.add_parser("create", parents=[audited()], help="declare a pool")
    p.add_argument("name")
    _options(p)
    p.set_defaults(handler=_create)
    p = group.add_parser("list", help="every pool with its replicas")
    p.set_defaults(handler=lambda args: lambda conn, actor: pool_store.list_pools(conn))
    p = group.add_parser("show", help="a pool, its estimate and its launches")
    p.add_argument("name")
    p.set_defaults(handler=lambda args: lambda conn, actor: pool_store.show(conn, name=args.name))
    p = group.add_parser("update", parents=[audited()], help="change a pool's spec")
    p.add_argument("name")
    _options(p)
    p.set_defaults(handler=_update)
    p = group.add_parser("delete", parents=[audited()], help="tear a pool's replicas down")
    p.add_argument("name")
    p.set_defaults(
        handler=lambda args: (
            lambda conn, actor: pool_store.delete(conn, actor=actor, name=args.name)
        )
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    return operator_cli.run(settings, args)
