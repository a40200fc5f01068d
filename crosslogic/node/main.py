"""``crosslogic node``: run one simulated GPU node, optionally registered with a control plane."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import ssl
import sys

from aiohttp import web

from crosslogic import logs
from crosslogic.agent import flags
from crosslogic.agent.load import NodeLoad
from crosslogic.agent.runner import AgentConfig, run_agent
from crosslogic.fleet.requests import TRANSPORTS
from crosslogic.lifecycle import TaskDied, exit_code, run_until_signalled
from crosslogic.node.config import NodeConfig
from crosslogic.node.server import NODE_STATE, make_app

log = logging.getLogger(__name__)

_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_UNROUTABLE = {"0.0.0.0", "::", ""}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crosslogic node",
        description="Run a simulated GPU node: an OpenAI-compatible server shaped like vLLM.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port", type=flags.port, default=0, help="port to bind; 0 (default) picks a free port"
    )
    parser.add_argument("--model", default="demo-llama", help="served model (default %(default)s)")
    parser.add_argument("--node-id", help="node id to register with (default: random)")
    parser.add_argument(
        "--control-plane",
        type=flags.url,
        help="control plane URL; without it the node does not register",
    )
    parser.add_argument(
        "--advertise-address", help="address the control plane should route to (default: --host)"
    )
    parser.add_argument(
        "--registration-token",
        default=None,
        help="the control plane's registration token (default: $NODE_REGISTRATION_TOKEN); "
        "registering returns this node's own credential",
    )
    flags.add_identity(
        parser, spot_help="a spot (preemptible) instance; SIGUSR1 is its interruption notice"
    )
    parser.add_argument(
        "--ttft-ms", type=flags.non_negative, default=0.0, help="time to first token"
    )
    parser.add_argument(
        "--tokens-per-second", type=flags.non_negative, default=0.0, help="0 (default): unpaced"
    )
    parser.add_argument("--max-model-len", type=int, default=NodeConfig.max_model_len)
    parser.add_argument("--max-num-seqs", type=int, default=NodeConfig.max_num_seqs)
    parser.add_argument("--log-level", choices=_LOG_LEVELS, default="info")
    parser.add_argument(
        "--tls-cert", help="serve HTTPS with this certificate (PEM; needs --tls-key)"
    )
    parser.add_argument("--tls-key", help="the private key of --tls-cert (PEM)")
    parser.add_argument(
        "--client-ca",
        help="require a client certificate issued by this CA (PEM): mutual TLS; the gateway's "
        "is issued by the control plane's CA (TLS_CA_DIR/ca.crt)",
    )
    parser.add_argument(
        "--transport",
        choices=TRANSPORTS,
        help="how the gateway is to reach this node, registered with it (default: mtls with "
        "--client-ca, tls with --tls-cert, else plain)",
    )
    return parser


def server_tls(args: argparse.Namespace) -> tuple[ssl.SSLContext | None, str]:
    """The node's TLS context (None: plain HTTP) and the transport it registers with;
    ValueError for flags that do not go together."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.client_ca and not args.tls_cert:
        raise ValueError("--client-ca needs --tls-cert and --tls-key")
    wanted = "mtls" if args.client_ca else "tls" if args.tls_cert else "plain"
    if args.transport is not None and args.transport != wanted:
        raise ValueError(f"--transport {args.transport} does not match the TLS flags ({wanted})")
    if not args.tls_cert:
        return None, wanted
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.tls_cert, args.tls_key)
    if args.client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(args.client_ca)
    return context, wanted


def run(argv: list[str]) -> int:
    """Entry point for ``crosslogic node ...``; returns the process exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help or a usage error, already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
    try:
        config = NodeConfig(
            model=args.model,
            node_id=args.node_id or f"node-{secrets.token_hex(4)}",
            ttft_s=args.ttft_ms / 1000,
            tokens_per_second=args.tokens_per_second,
            max_model_len=args.max_model_len,
            max_num_seqs=args.max_num_seqs,
        )
        tls, transport = server_tls(args)
    except (ValueError, OSError) as exc:  # OSError: a certificate file missing or unreadable
        print(f"crosslogic node: {exc}", file=sys.stderr)
        return 2
    token = args.registration_token or os.environ.get("NODE_REGISTRATION_TOKEN") or None
    logs.configure(service="node", level=args.log_level, secrets=(token,) if token else ())
    try:
        asyncio.run(
            _serve(args, config=config, registration_token=token, tls=tls, transport=transport)
        )
    except OSError as exc:  # typically the port is taken
        print(f"crosslogic node: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except TaskDied as died:  # the agent: unregistered, the node gets no traffic
        return exit_code(died, process=f"node {config.node_id}")
    return 0


async def _serve(
    args: argparse.Namespace,
    *,
    config: NodeConfig,
    registration_token: str | None,
    tls: ssl.SSLContext | None,
    transport: str,
) -> None:
    app = make_app(config)
    # The access log costs more than a simulated completion; keep it for debugging only.
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=log if args.log_level == "debug" else None,
        # vLLM's own (uvicorn's) keep-alive: idle connections are closed after 5 s
        keepalive_timeout=5.0,
    )
    await runner.setup()
    tasks: list[asyncio.Task[None]] = []
    try:
        site = web.TCPSite(runner, args.host, args.port, ssl_context=tls)
        await site.start()
        port = int(runner.addresses[0][1])
        host = f"[{args.host}]" if ":" in args.host else args.host
        scheme = "https" if tls else "http"
        print(
            f"node {config.node_id} serving {config.model} on {scheme}://{host}:{port}", flush=True
        )
        if args.control_plane:
            address = args.advertise_address or args.host
            if address in _UNROUTABLE:
                address = "127.0.0.1"
            agent = AgentConfig(
                registration=flags.registration_config(
                    args,
                    control_plane_url=args.control_plane,
                    model=config.model,
                    address=address,
                    port=port,
                    node_id=config.node_id,
                    registration_token=registration_token,
                    capacity=config.max_num_seqs,
                    transport=transport,
                ),
                vllm_url=f"{scheme}://{'127.0.0.1' if args.host in _UNROUTABLE else host}:{port}",
            )
            # the same agent as beside a real vLLM, reading this node's own /metrics; over
            # TLS (perhaps mutual) it reads the same figures in process instead: it holds no
            # client certificate. SIGUSR1 stands for the cloud's interruption notice.
            state = app[NODE_STATE]

            async def load() -> NodeLoad:
                return state.load()

            in_process = load if tls else None
            tasks.append(asyncio.create_task(run_agent(agent, load=in_process), name="agent"))
        # the agent handles every network failure itself: its end is a bug, and an
        # unregistered node serves nobody, so the node exits (TaskDied) to be restarted.
        # Stopping cancels it first, which deregisters: the gateway stops routing here
        # before the port closes.
        await run_until_signalled(tasks)
        log.info("shutting down node %s", config.node_id)
    finally:
        await runner.cleanup()
