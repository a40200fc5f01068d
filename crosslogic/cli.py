"""The ``crosslogic`` command: run the stack, a service, a node, migrations, config."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import uvloop

from crosslogic import logs, services
from crosslogic.accounts import cli as accounts_cli
from crosslogic.accounts import quota_cli
from crosslogic.billing import cli as billing_cli
from crosslogic.billing import reservation_cli
from crosslogic.catalog import cli as catalog_cli
from crosslogic.demo import client_lines
from crosslogic.fleet import cli as fleet_cli
from crosslogic.lifecycle import TaskDied, exit_code, interrupt_on_sigterm, wait_for_signal
from crosslogic.orchestrator import cli as pools_cli
from crosslogic.plan import plan
from crosslogic.ratelimit import cli as limits_cli
from crosslogic.seeding import migrate_and_seed, migrate_database
from crosslogic.settings import Settings, SettingsError, load
from crosslogic.supervisor import ChildFailed
from crosslogic.tls import cli as tls_cli


def configure_logging(settings: Settings, args: argparse.Namespace) -> None:
    """JSON lines on stderr (crosslogic.logs), named for the service a process runs or for
    the command (``up``, ``keys``...); the settings' secrets are masked wherever they appear."""
    logs.configure(
        service=args.name if args.command == "service" else args.command,
        level=settings.log_level,
        secrets=logs.secrets_of(settings),
    )


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from crosslogic.stack import Stack

    stack = Stack(plan(settings), nodes=args.nodes)
    configure_logging(stack.settings, args)  # the admin and registration tokens plan() made
    print("starting CrossLogic (Postgres, Redis, services, Envoy, nodes)...", flush=True)
    interrupt_on_sigterm()
    try:
        stack.start()
    except KeyboardInterrupt:
        print("stopped while starting", flush=True)
        return 130
    except ChildFailed as exc:  # Stack.start stopped everything already
        print(f"crosslogic up: {exc}", file=sys.stderr, flush=True)
        return 1
    try:
        assert stack.demo is not None
        print(f"\nCrossLogic is up. Logs: {stack.supervisor.log_dir}", flush=True)
        print(
            f"Admin API: {stack.admin_url}  Metrics: "
            f"http://127.0.0.1:{stack.settings.prometheus_port}/metrics\n"
        )
        if len(stack.gateways) > 1:  # OPENAI_BASE_URL below is the first; these are all
            print("Gateways: " + "  ".join(g.base_url for g in stack.gateways) + "\n")
        print("\n".join(client_lines(stack.base_url, stack.demo, ca_file=stack.listener_ca)))
        print(f"ADMIN_TOKEN={stack.settings.admin_token}")
        # what more nodes register with: `crosslogic node --control-plane <admin API> ...`
        print(f"NODE_REGISTRATION_TOKEN={stack.settings.node_registration_token}")
        print("\nPress Ctrl-C to stop everything.", flush=True)
        wait_for_signal(stack.supervisor.check)
    except ChildFailed as exc:  # a crash loop: the supervisor gave up on one child
        print(f"crosslogic up: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("stopping...", flush=True)
        stack.stop()
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """Migrate, create the demo model/tenant/environment and a new key, print the lines."""
    if settings.db_host is None:
        print("crosslogic demo needs DB_HOST (`crosslogic up` seeds its own)", file=sys.stderr)
        return 2
    seeded = asyncio.run(migrate_and_seed(settings, model=args.model))
    print("\n".join(client_lines(args.base_url.rstrip("/"), seeded)))
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    """Every control-plane service (no embedded servers, no Envoy, no nodes): containers."""
    from crosslogic.stack import Stack

    if settings.db_host is None or (settings.redis_host is None and not settings.redis_cluster):
        print(
            "crosslogic serve needs DB_HOST and REDIS_HOST or REDIS_CLUSTER (use `crosslogic "
            "up` for the embedded ones)",
            file=sys.stderr,
        )
        return 2
    stack = Stack(plan(settings), nodes=0, log_to_files=False)
    configure_logging(stack.settings, args)
    interrupt_on_sigterm()
    try:
        stack.start_services(without=frozenset(args.without))
        wait_for_signal(stack.supervisor.check)
    except KeyboardInterrupt:
        return 130
    except ChildFailed as exc:
        print(f"crosslogic serve: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        stack.stop()
    return 0


def cmd_service(settings: Settings, args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry, start_http_server

    from crosslogic.metrics import MULTIPROC_ENV

    run = services.service(args.name).main()
    registry = CollectorRegistry()
    if args.name != "admin" and not os.environ.get(MULTIPROC_ENV):
        # Run on its own (a gateway's billing container), not under `up`/`serve`, whose admin
        # process serves every process's metrics: nobody else would serve this one's.
        start_http_server(settings.prometheus_port, addr=settings.server_host, registry=registry)
    try:
        # uvloop: a Python gRPC hop behind Envoy measured ~0.1 ms faster unloaded and ~5%
        # more requests/s than on asyncio's own loop; grpc.aio, asyncpg and aiohttp run on it
        uvloop.run(run(settings, registry))
    except TaskDied as died:  # half alive is worse than restarted: see crosslogic.lifecycle
        return exit_code(died, process=args.name)
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    if settings.db_host is None:
        print(
            "crosslogic migrate needs DB_HOST (the embedded database is migrated by `up`)",
            file=sys.stderr,
        )
        return 2
    applied = asyncio.run(migrate_database(settings))
    print(f"applied: {', '.join(applied)}" if applied else "database is up to date")
    return 0


def cmd_db_connections(settings: Settings, args: argparse.Namespace) -> int:
    """The most PostgreSQL connections the services hold with these settings (no database)."""
    from crosslogic.db.budget import budget, render

    print(render(budget(settings, without=args.without), settings))
    return 0


def cmd_envoy_config(settings: Settings, args: argparse.Namespace) -> int:
    from crosslogic.envoy_config import listener_sds_path, render, write_listener_sds

    sds = listener_sds_path(settings, beside=None if args.output == "-" else Path(args.output))
    text = render(
        settings,
        listen_address=args.listen_address,
        admin_address=args.admin_address,
        control_plane_host=args.control_plane_host,
        lua_path=Path(args.lua_path) if args.lua_path else None,
        boot_id=args.boot_id,
        listener_sds=sds,
    )
    write_listener_sds(settings, sds)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
    return 0


def without(parser: argparse.ArgumentParser) -> None:
    """``serve``'s --without, which ``db-connections`` takes too (to count what it runs)."""
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        choices=services.NAMES,
        help="a service not to run here (repeatable): scaled out, each gateway's billing "
        "runs beside its Envoy instead (`crosslogic service billing`)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crosslogic", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the whole stack with a demo key (Ctrl-C stops it)")
    up.add_argument("--nodes", type=int, default=2, help="simulated GPU nodes to start")
    without(
        sub.add_parser("serve", help="run every control-plane service (external Postgres/Redis)")
    )
    service = sub.add_parser("service", help="run one service process")
    service.add_argument("name", choices=services.NAMES)
    sub.add_parser("migrate", help="apply pending database migrations")
    without(
        sub.add_parser(
            "db-connections",
            help="print the most PostgreSQL connections `crosslogic serve` holds with this "
            "environment",
        )
    )
    demo = sub.add_parser("demo", help="create the demo tenant, model and a key; print them")
    demo.add_argument("--base-url", default="http://127.0.0.1:10000/v1")
    demo.add_argument("--model", default="demo-llama")
    cfg = sub.add_parser("envoy-config", help="render the Envoy bootstrap")
    cfg.add_argument("--output", default="-")
    cfg.add_argument("--listen-address", default="0.0.0.0")
    cfg.add_argument("--admin-address", default="127.0.0.1")
    cfg.add_argument("--control-plane-host", default="127.0.0.1")
    cfg.add_argument("--lua-path", default=None)
    cfg.add_argument(
        "--boot-id",
        default=None,
        help="this Envoy process's boot id (default: a new one); containers render "
        "0000000000000000 once and envoy/start-envoy.sh gives every process its own",
    )
    sub.add_parser(
        "node", help="run a simulated GPU node (see `crosslogic node --help`)", add_help=False
    )
    sub.add_parser("agent", help="run the node agent beside vLLM (see --help)", add_help=False)
    for group in GROUPS:
        group.add_parsers(sub)
    pools = sub.add_parser("orchestrator", help="run the GPU pools' orchestrator (needs skypilot)")
    pools.set_defaults(name="orchestrator")
    return parser


# the operator command groups, each a module with add_parsers(sub), COMMANDS and run()
GROUPS = (
    accounts_cli,
    limits_cli,
    billing_cli,
    catalog_cli,
    quota_cli,
    reservation_cli,
    fleet_cli,
    tls_cli,
    pools_cli,
)

COMMANDS = {
    "up": cmd_up,
    "serve": cmd_serve,
    "service": cmd_service,
    "migrate": cmd_migrate,
    "db-connections": cmd_db_connections,
    "demo": cmd_demo,
    "envoy-config": cmd_envoy_config,
    "orchestrator": cmd_service,  # `crosslogic service orchestrator`, the GPU pools'
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["node"], ["agent"]):  # their own parsers, settings and logging
        from crosslogic.agent import main as agent
        from crosslogic.node import main as node

        return int((node if argv[0] == "node" else agent).run(argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        settings = load(os.environ)
        configure_logging(settings, args)
        for group in GROUPS:
            if args.command in group.COMMANDS:
                return int(group.run(settings, args))
        return COMMANDS[args.command](settings, args)
    except SettingsError as exc:  # bad variables, or ports the system cannot have
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
